//! The journal's form of a commit's ops: a compact binary encoding, written
//! once per commit on the acknowledgement's path and read back only after
//! a crash, so it is built to be cheap to write rather than to inspect.
//!
//! Integers are little-endian; a string is its length (`u32`) and its
//! UTF-8 bytes. A hold of the same message as the hold before it (every
//! receiver of a broadcast shares one `Arc`) names only its user, so a
//! broadcast's text is written once per record and decodes to one `Arc`
//! again, which is what the SQLite engine groups on.

use std::net::IpAddr;
use std::sync::Arc;

use chatcore::{LoginFailures, Message, MessageKind, StoreOp, Time};

const HOLD: u8 = 1;
const HOLD_SAME: u8 = 2;
const RELEASE: u8 = 3;
const RESERVE_IDS: u8 = 4;
const SEEN: u8 = 5;
const LOGIN_FAILURES: u8 = 6;
const CLEAR_LOGIN_FAILURES: u8 = 7;

/// Appends the encoding of `ops` to `out`.
pub(super) fn encode(ops: &[StoreOp], out: &mut Vec<u8>) {
    let mut last: Option<&Arc<Message>> = None;
    for op in ops {
        match op {
            StoreOp::Hold { user, message } => {
                if last.is_some_and(|m| Arc::ptr_eq(m, message)) {
                    out.push(HOLD_SAME);
                    put_str(out, user);
                } else {
                    out.push(HOLD);
                    put_str(out, user);
                    put_u64(out, message.id);
                    put_u64(out, message.at.unix_millis());
                    put_str(out, &message.from);
                    out.push(match message.kind {
                        MessageKind::Private => 0,
                        MessageKind::Broadcast => 1,
                    });
                    put_str(out, &message.text);
                    last = Some(message);
                }
            }
            StoreOp::Release { user, upto } => {
                out.push(RELEASE);
                put_str(out, user);
                put_u64(out, *upto);
            }
            StoreOp::ReserveIds { next } => {
                out.push(RESERVE_IDS);
                put_u64(out, *next);
            }
            StoreOp::Seen { user, at } => {
                out.push(SEEN);
                put_str(out, user);
                put_u64(out, at.unix_millis());
            }
            StoreOp::LoginFailures(f) => {
                out.push(LOGIN_FAILURES);
                put_str(out, &f.user);
                put_ip(out, f.ip);
                out.extend_from_slice(&f.count.to_le_bytes());
                put_u64(out, f.last.unix_millis());
                match f.blocked_until {
                    Some(t) => {
                        out.push(1);
                        put_u64(out, t.unix_millis());
                    }
                    None => out.push(0),
                }
            }
            StoreOp::ClearLoginFailures { user, ip } => {
                out.push(CLEAR_LOGIN_FAILURES);
                put_str(out, user);
                put_ip(out, *ip);
            }
        }
    }
}

/// Reads back what [`encode`] wrote; `Err` says what is wrong with bytes
/// it did not write.
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<StoreOp>, String> {
    let mut r = Reader { bytes, at: 0 };
    let mut ops = Vec::new();
    let mut last: Option<Arc<Message>> = None;
    while r.at < bytes.len() {
        let op = match r.u8()? {
            HOLD => {
                let user = r.string()?;
                let id = r.u64()?;
                let at = Time::from_unix_millis(r.u64()?);
                let from = r.string()?;
                let kind = match r.u8()? {
                    0 => MessageKind::Private,
                    1 => MessageKind::Broadcast,
                    other => return Err(format!("unknown message kind {other}")),
                };
                let text = r.string()?;
                let message = Arc::new(Message {
                    id,
                    at,
                    from,
                    kind,
                    text,
                });
                last = Some(Arc::clone(&message));
                StoreOp::Hold { user, message }
            }
            HOLD_SAME => {
                let user = r.string()?;
                let message = last
                    .clone()
                    .ok_or("a hold of the same message before any message")?;
                StoreOp::Hold { user, message }
            }
            RELEASE => StoreOp::Release {
                user: r.string()?,
                upto: r.u64()?,
            },
            RESERVE_IDS => StoreOp::ReserveIds { next: r.u64()? },
            SEEN => StoreOp::Seen {
                user: r.string()?,
                at: Time::from_unix_millis(r.u64()?),
            },
            LOGIN_FAILURES => {
                let user = r.string()?;
                let ip = r.ip()?;
                let count = u32::from_le_bytes(r.array()?);
                let last = Time::from_unix_millis(r.u64()?);
                let blocked_until = match r.u8()? {
                    0 => None,
                    1 => Some(Time::from_unix_millis(r.u64()?)),
                    other => return Err(format!("bad block flag {other}")),
                };
                StoreOp::LoginFailures(LoginFailures {
                    user,
                    ip,
                    count,
                    last,
                    blocked_until,
                })
            }
            CLEAR_LOGIN_FAILURES => StoreOp::ClearLoginFailures {
                user: r.string()?,
                ip: r.ip()?,
            },
            other => return Err(format!("unknown op {other}")),
        };
        ops.push(op);
    }
    Ok(ops)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lines are bounded far below 4 GiB (`max_line`), and so is every
    // string the core keeps.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("record ends inside a field at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8".to_owned())
    }

    fn ip(&mut self) -> Result<IpAddr, String> {
        match self.u8()? {
            4 => Ok(IpAddr::from(self.array::<4>()?)),
            6 => Ok(IpAddr::from(self.array::<16>()?)),
            other => Err(format!("bad address family {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatcore::testing::store_check::{self, Bodies};
    use proptest::prelude::*;

    proptest! {
        /// Every op comes back as it was, and holds that shared a message
        /// share one again.
        #[test]
        fn ops_come_back_as_they_were(batches in store_check::arb_batches_with(Bodies::Any)) {
            for ops in &batches {
                let mut bytes = Vec::new();
                encode(ops, &mut bytes);
                let back = decode(&bytes).unwrap();
                prop_assert_eq!(&back, ops);
                for (a, b) in ops.windows(2).zip(back.windows(2)) {
                    if let ([StoreOp::Hold { message: m1, .. }, StoreOp::Hold { message: m2, .. }],
                            [StoreOp::Hold { message: n1, .. }, StoreOp::Hold { message: n2, .. }]) = (a, b) {
                        prop_assert_eq!(Arc::ptr_eq(m1, m2), Arc::ptr_eq(n1, n2));
                    }
                }
            }
        }
    }

    #[test]
    fn an_address_and_a_block_come_back() {
        let ops = vec![
            StoreOp::LoginFailures(LoginFailures {
                user: "bob".into(),
                ip: "::1".parse().unwrap(),
                count: 3,
                last: Time::from_unix_millis(5),
                blocked_until: Some(Time::from_unix_millis(9)),
            }),
            StoreOp::ClearLoginFailures {
                user: "ann".into(),
                ip: "10.0.0.1".parse().unwrap(),
            },
        ];
        let mut bytes = Vec::new();
        encode(&ops, &mut bytes);
        assert_eq!(decode(&bytes).unwrap(), ops);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
