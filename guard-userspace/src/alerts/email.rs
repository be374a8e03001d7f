//! The e-mail sink: one plain-text mail per message over SMTP, through
//! lettre (a maintained SMTP client with STARTTLS on rustls and AUTH PLAIN
//! and LOGIN; writing SMTP by hand would be a second TLS state machine).
use std::{path::Path, time::Duration};

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
};

use super::config::{AlertConfig, StartTls};

/// How long one SMTP exchange (connect, each command) may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("alerts e-mail: `{key}` is missing")]
    Missing { key: &'static str },
    #[error("alerts e-mail: `{key}` {value:?}: {reason}")]
    Bad {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("alerts e-mail: reading {key} {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("alerts e-mail: TLS for {server}: {source}")]
    Tls {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
    #[error("building the e-mail: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("SMTP {server}: {source}")]
    Send {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    port: u16,
    from: Mailbox,
    to: Vec<Mailbox>,
}

fn mailbox(key: &'static str, text: &str) -> Result<Mailbox, EmailError> {
    text.parse()
        .map_err(|e: lettre::address::AddressError| EmailError::Bad {
            key,
            value: text.to_string(),
            reason: e.to_string(),
        })
}

/// The password, from the config or the first line of its file.
fn password(config: &AlertConfig) -> Result<String, EmailError> {
    if let Some(password) = &config.password {
        return Ok(password.0.clone());
    }
    let path = config
        .password_file
        .as_deref()
        .ok_or(EmailError::Missing { key: "password" })?;
    let text = std::fs::read_to_string(path).map_err(|source| EmailError::Read {
        key: "password_file",
        path: path.display().to_string(),
        source,
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

fn tls_parameters(server: &str, ca_file: Option<&Path>) -> Result<TlsParameters, EmailError> {
    let tls_error = |source| EmailError::Tls {
        server: server.to_string(),
        source,
    };
    let mut builder = TlsParameters::builder(server.to_string());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| EmailError::Read {
            key: "ca_file",
            path: path.display().to_string(),
            source,
        })?;
        builder = builder.add_root_certificate(Certificate::from_pem(&pem).map_err(tls_error)?);
    }
    builder.build_rustls().map_err(tls_error)
}

impl Email {
    /// Reads the password and CA files and builds the client; connects only
    /// when a message is sent.
    pub fn new(config: &AlertConfig) -> Result<Email, EmailError> {
        let server = config
            .server
            .clone()
            .ok_or(EmailError::Missing { key: "server" })?;
        let from = mailbox(
            "from",
            config
                .from
                .as_deref()
                .ok_or(EmailError::Missing { key: "from" })?,
        )?;
        let to = config
            .to
            .iter()
            .map(|to| mailbox("to", to))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match config.starttls {
            StartTls::Required => {
                Tls::Required(tls_parameters(&server, config.ca_file.as_deref())?)
            }
            StartTls::Opportunistic => {
                Tls::Opportunistic(tls_parameters(&server, config.ca_file.as_deref())?)
            }
            StartTls::Never => Tls::None,
        };
        let port = config.port.unwrap_or(match config.starttls {
            StartTls::Never => 25,
            _ => 587,
        });
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&server)
            .port(port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let Some(username) = &config.username {
            builder = builder.credentials(Credentials::new(username.clone(), password(config)?));
        }
        Ok(Email {
            transport: builder.build(),
            server,
            port,
            from,
            to,
        })
    }

    /// `server:port`, for the log.
    pub fn describe(&self) -> String {
        let to: Vec<_> = self.to.iter().map(|m| m.email.to_string()).collect();
        format!(
            "mailing {} through {}:{}",
            to.join(", "),
            self.server,
            self.port
        )
    }

    /// One attempt: the server accepted the mail, or an error.
    pub async fn send(&self, subject: &str, text: String) -> Result<(), EmailError> {
        let mut message = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message.body(text)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|source| EmailError::Send {
                server: format!("{}:{}", self.server, self.port),
                source,
            })
    }
}
