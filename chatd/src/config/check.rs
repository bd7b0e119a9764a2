//! `chatd check-config`: everything startup reads before it listens, read
//! and checked the same way, without starting. For an operator (or
//! `ExecStartPre=`, or a deploy script) to find a mistake before a restart
//! or reload meets it.

use std::fmt::Write as _;
use std::path::Path;

use super::{Cli, Settings};

/// Checks the configuration file at `config` (the defaults if `None`), the
/// users file it names and, with TLS configured, the certificate and key.
/// Returns a summary for stdout; any error is a reason to refuse the
/// configuration (exit status 2). The data directory is not touched: a
/// check must not create or lock it under a running server.
pub fn check_config(config: Option<&Path>) -> anyhow::Result<String> {
    let cli = Cli {
        config: config.map(Path::to_path_buf),
        ..Cli::default()
    };
    let settings = Settings::from_cli(&cli)?;
    let accounts = crate::load_accounts(&settings.users_file)?;
    let plain = accounts.iter().filter(|(_, c)| c.is_plain()).count();
    let mut summary = String::new();
    match config {
        Some(path) => writeln!(summary, "config {}: ok", path.display())?,
        None => writeln!(summary, "no config file: the defaults")?,
    }
    writeln!(
        summary,
        "users file {}: {} accounts ({plain} with plain-text passwords)",
        settings.users_file.display(),
        accounts.len()
    )?;
    if let Some(tls) = &settings.tls {
        crate::tls::server_config(&tls.cert, &tls.key)?;
        writeln!(
            summary,
            "TLS certificate {} and key {}: ok",
            tls.cert.display(),
            tls.key.display()
        )?;
    }
    write!(
        summary,
        "would listen on {}:{}, data in {}",
        settings.host,
        settings.port,
        settings.data_dir.display()
    )?;
    Ok(summary)
}
