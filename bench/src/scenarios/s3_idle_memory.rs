//! S3: what an idle logged-in session costs the server in memory (chatd,
//! the relay, and ngircd's registered IRC connections when it is installed).

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::client::{login_many, Ignore, Kind, Session};
use crate::ctx::{ChatdConfig, Ctx};
use crate::proc::{Memory, ServerProc};
use crate::report::{Row, Target, Unit};
use crate::users::Account;

use super::plain_with_cheap;

/// Server memory per idle session: (after − before) / sessions, in bytes.
async fn idle_sessions(
    kind: Kind,
    server: &ServerProc,
    accounts: &[Account],
) -> Result<(f64, Memory, Memory)> {
    // A few sessions first, so that code and runtime pages are in.
    let warm = login_many(kind, server.addr, &accounts[..50.min(accounts.len())], 50).await?;
    for s in warm {
        s.logout().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.memory()?;
    let t0 = Instant::now();
    let logged = login_many(kind, server.addr, accounts, 256).await?;
    let login_secs = t0.elapsed().as_secs_f64();
    let sessions: Vec<Session<Ignore>> = logged.into_iter().map(|s| s.spawn(Ignore)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.memory()?;
    let per =
        (after.rss_kib.saturating_sub(before.rss_kib)) as f64 * 1024.0 / sessions.len() as f64;
    println!(
        "  {:8} {} idle sessions (logged in in {login_secs:.1} s): RSS {} → {} KiB, {:.0} B/session",
        kind.label(),
        sessions.len(),
        before.rss_kib,
        after.rss_kib,
        per
    );
    for s in sessions {
        s.abort();
    }
    Ok((per, before, after))
}

/// S3: memory per idle logged-in session.
pub async fn s3(ctx: &Ctx) -> Result<Vec<Row>> {
    println!("S3: idle sessions");
    let n = ctx.opts.s3_sessions;
    let accounts = plain_with_cheap("i", n)?;
    let (base, _, _) = {
        let relay = ctx.start_relay("s3")?;
        idle_sessions(Kind::Relay, &relay, &accounts[..n]).await?
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let setup = ctx.chatd_setup("s3", &accounts, ChatdConfig::load_test())?;
    let chatd = ctx.start_chatd(&setup)?;
    let (chat, before, after) = idle_sessions(ctx.chat, &chatd, &accounts[..n]).await?;
    drop(chatd);
    let mut irc_rows = Vec::new();
    if let Some(ngircd) = ctx.start_ngircd("S3")? {
        let (irc, before, after) = idle_sessions(Kind::Irc, &ngircd, &accounts[..n]).await?;
        irc_rows.push(
            Row::new(
                "S3",
                format!("{n} idle sessions: server memory per session"),
                Unit::Bytes,
            )
            .values(Some(chat), Some(irc))
            .reference("ngircd"),
        );
        irc_rows.push(
            Row::new(
                "S3",
                format!("{n} idle sessions: ngircd RSS before → after"),
                Unit::Bytes,
            )
            .values(
                Some(after.rss_kib as f64 * 1024.0),
                Some(before.rss_kib as f64 * 1024.0),
            )
            .reference("ngircd before"),
        );
    }
    let mut rows = vec![
        Row::new(
            "S3",
            format!("{n} idle sessions: server memory per session"),
            Unit::Bytes,
        )
        .values(Some(chat), Some(base))
        .target(Target::AtMost(4096.0)),
        Row::new(
            "S3",
            format!("{n} idle sessions: chatd RSS before → after"),
            Unit::Bytes,
        )
        .values(
            Some(after.rss_kib as f64 * 1024.0),
            Some(before.rss_kib as f64 * 1024.0),
        )
        .reference("chatd before"),
    ];
    rows.extend(irc_rows);
    Ok(rows)
}
