//! Why `sipguard run` stopped or could not start. Each variant is a step of
//! start-up or of the run; the CLI prints the message and exits 1.
use crate::{
    alerts::AlertError,
    control::server::BindError,
    fleet::FleetError,
    kernel::{
        loader::LoadError, netns::NetnsError, pins::PinsError, preflight::PreflightError,
        store::MapsError,
    },
    metrics::MetricsError,
    policy::config::ConfigError,
    sip::hep_input::BindError as HepBindError,
    state::StateError,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// `--require-pins`, and the pins would not outlive this process.
    #[error("--require-pins: {0}")]
    PinsRequired(PinsError),
    #[error("--require-pins: {0}")]
    PinsPrivate(String),
    #[error("installing the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("starting the [[alerts]] sinks: {0}")]
    Alerts(AlertError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    HepBind(#[from] HepBindError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A map step of start-up (`what` says which).
    #[error("{what}: {cause}")]
    Maps {
        what: &'static str,
        cause: MapsError,
    },
    /// A part of the guard asked for twice: a bug, never bad input.
    #[error("{0} taken twice")]
    TakenTwice(&'static str),
    #[error("the ban event ring: {0}")]
    BanEvents(std::io::Error),
    /// The ban event reader ended: without it the controller hears no bans.
    #[error("the ban event reader stopped: {0}")]
    EventReaderStopped(String),
}

impl DaemonError {
    pub(super) fn maps(what: &'static str) -> impl FnOnce(MapsError) -> DaemonError {
        move |cause| DaemonError::Maps { what, cause }
    }
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;
