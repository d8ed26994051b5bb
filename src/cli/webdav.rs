//! `datamesh webdav`: the gateway's users, kept in config.toml (a running
//! daemon follows the file).

use crate::home::Home;
use anyhow::{Context, anyhow, bail};

/// `datamesh webdav adduser|deluser|users`: the gateway's users, in config.toml.
pub fn run(home: &Home, action: super::WebdavAction) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let users = home.config()?.webdav.users;
    match action {
        super::WebdavAction::Users => {
            for u in users {
                let ro = if u.read_only { " (read-only)" } else { "" };
                println!("{}{ro}", u.name);
            }
        }
        super::WebdavAction::Adduser { name, read_only } => {
            crate::webdav::auth::check_name(&name).map_err(|e| anyhow!(e))?;
            if users.iter().any(|u| u.name == name) {
                bail!(
                    "webdav user {name} exists already (in {})",
                    home.paths().config().display()
                );
            }
            let password = if std::io::stdin().is_terminal() {
                let p = rpassword::prompt_password(format!("password for {name}: "))?;
                if rpassword::prompt_password("again: ")? != p {
                    bail!("the two passwords differ; nothing was changed");
                }
                p
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\n', '\r']).to_string()
            };
            if password.len() < 8 {
                bail!("a password of at least 8 characters, please; nothing was changed");
            }
            let hash = crate::webdav::auth::hash_password(&password);
            let path = home.paths().config();
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!(
                "\n[[webdav.users]]\nname = \"{name}\"\nhash = \"{hash}\"\nread_only = {read_only}\n"
            ));
            crate::util::write_secret(&path, text.as_bytes())
                .map_err(|(p, e)| anyhow!("{}: {e}", p.display()))?;
            println!(
                "webdav user {name} added{}; a running daemon lets them in within a second",
                if read_only { " (read-only)" } else { "" }
            );
        }
        super::WebdavAction::Deluser { name, open } => {
            let path = home.paths().config();
            if !users.iter().any(|u| u.name == name) {
                bail!("no webdav user {name} (in {})", path.display());
            }
            if users.len() == 1 && !open {
                bail!(
                    "{name} is the last webdav user: without users, a gateway on a loopback \
                     address serves everyone on this host unasked (one on another address \
                     does not start). Add another user first, or say --open"
                );
            }
            // Edited, not rewritten: the file's comments and order stay.
            let text = std::fs::read_to_string(&path)?;
            let mut doc: toml_edit::DocumentMut =
                text.parse().with_context(|| path.display().to_string())?;
            let list = doc
                .get_mut("webdav")
                .and_then(|w| w.get_mut("users"))
                .and_then(|u| u.as_array_of_tables_mut())
                .ok_or_else(|| anyhow!("{}: no [[webdav.users]]", path.display()))?;
            list.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name.as_str()));
            crate::util::write_secret(&path, doc.to_string().as_bytes())
                .map_err(|(p, e)| anyhow!("{}: {e}", p.display()))?;
            println!("webdav user {name} removed; a running daemon refuses them within a second");
        }
    }
    Ok(())
}
