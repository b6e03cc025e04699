//! Simulated ranking viewers: each follows a racer of its class, and every
//! push it receives shows when records first became visible in rankings.

use crate::push::Push;
use crate::schedule::Schedule;
use crate::stats::Stats;
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as Frame;

/// One viewer of `class`, following `racer` (and the racers of `follow`,
/// if any), until sending ends.
pub async fn viewer(
    target: String,
    class: u8,
    racer: u64,
    follow: Vec<u64>,
    schedule: Schedule,
    stats: Arc<Stats>,
) {
    let mut url = format!(
        "{}/v1/rankings/ws?classId={class}&racerId={racer}",
        target.replacen("http", "ws", 1)
    );
    if !follow.is_empty() {
        let ids: Vec<String> = follow.iter().map(u64::to_string).collect();
        url.push_str("&follow=");
        url.push_str(&ids.join(","));
    }
    let connected = crate::socket::viewer(&url).await;
    stats.ready.fetch_add(1, Ordering::Relaxed);
    let Ok(mut ws) = connected else {
        stats.error("viewer_connect");
        return;
    };
    loop {
        // Until sending starts, look again every second for when to leave.
        let deadline = schedule.known().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(1),
            |w| w.closing(),
        );
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        match next {
            Err(_) if schedule.known().is_some_and(|w| w.closing() <= deadline) => break,
            Err(_) => continue,
            Ok(Some(Ok(Frame::Text(text)))) => {
                let received = std::time::Instant::now();
                stats.pushes.fetch_add(1, Ordering::Relaxed);
                stats
                    .push_bytes
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
                let Some(push) = Push::read(&text) else {
                    stats.error("viewer_bad_push");
                    continue;
                };
                if push.ghost {
                    stats.ghost_pushes.fetch_add(1, Ordering::Relaxed);
                }
                if push.following {
                    stats.following_pushes.fetch_add(1, Ordering::Relaxed);
                }
                for racer in push.here_now {
                    if let Some((_, sent)) =
                        stats.unseen.remove(&(push.race_id, push.second, racer))
                    {
                        stats.ranked(received.duration_since(sent).as_micros() as u64);
                    }
                }
            }
            Ok(Some(Ok(Frame::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                stats.error("viewer_dropped");
                return;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}
