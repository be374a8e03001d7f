//! `sipguard ban add|remove`.
use super::{args::BanAction, args::BanLength, output::Output, CliError};
use crate::control::client::Client;

pub fn ban(client: &Client, action: BanAction, out: &mut Output) -> Result<(), CliError> {
    match action {
        BanAction::Add {
            ip,
            duration,
            reason,
        } => {
            let banned = client.ban_add(ip, duration.and_then(BanLength::duration), reason)?;
            out.line(format_args!(
                "banned {} for {}",
                banned.source, banned.duration
            ))
        }
        BanAction::Remove { ip } => {
            let unbanned = client.ban_remove(ip)?;
            out.line(format_args!("unbanned {}", unbanned.source))
        }
    }
}
