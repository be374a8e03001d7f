//! What the CLI prints: lines and tables on stdout, through a writer that
//! ends quietly when the reader has gone (`sipguard bans | head -3`), as
//! Unix tools do.
use std::io::{self, Write};

use serde::Serialize;

use super::CliError;

/// Standard output, or any writer in tests.
pub struct Output {
    out: Box<dyn Write>,
}

impl Output {
    pub fn stdout() -> Output {
        Output {
            out: Box::new(io::stdout().lock()),
        }
    }

    pub fn to(out: impl Write + 'static) -> Output {
        Output { out: Box::new(out) }
    }

    /// Writes one line.
    pub fn line(&mut self, text: impl std::fmt::Display) -> Result<(), CliError> {
        writeln!(self.out, "{text}").map_err(closed_or_failed)
    }

    /// Writes bytes as they are (a generated script or page).
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.out.write_all(bytes).map_err(closed_or_failed)
    }

    /// Pretty JSON, for `--json`.
    pub fn json(&mut self, value: &impl Serialize) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Failed(format!("encoding JSON: {e}")))?;
        self.line(text)
    }

    /// Left-aligned columns, two spaces apart.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
        for line in table_lines(header, rows) {
            self.line(line)?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), CliError> {
        self.out.flush().map_err(closed_or_failed)
    }
}

/// A closed pipe ends the command quietly; anything else is a failure.
fn closed_or_failed(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::ClosedPipe
    } else {
        CliError::Failed(format!("writing the output: {e}"))
    }
}

/// A table's lines, header first, each trimmed at the end.
pub fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let cell_width = |row: &[String], i: usize| row.get(i).map_or(0, |c| c.chars().count());
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| cell_width(row, i))
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that has gone away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_quietly_and_other_errors_fail() {
        let mut out = Output::to(ClosedPipe);
        assert!(matches!(out.line("x"), Err(CliError::ClosedPipe)));
        assert!(matches!(out.bytes(b"x"), Err(CliError::ClosedPipe)));
        assert_eq!(CliError::ClosedPipe.exit_code(), 0);
        let mut out = Output::to(Full);
        let e = out.line("x").unwrap_err();
        assert!(matches!(e, CliError::Failed(_)), "{e}");
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["192.0.2.7".to_string(), "manual".to_string(), String::new()],
            vec![
                "10.0.0.1".to_string(),
                "rate-limit".to_string(),
                "x".to_string(),
            ],
        ];
        assert_eq!(
            table_lines(&["SOURCE", "REASON", "DETAIL"], &rows),
            [
                "SOURCE     REASON      DETAIL",
                "192.0.2.7  manual",
                "10.0.0.1   rate-limit  x",
            ]
        );
    }
}
