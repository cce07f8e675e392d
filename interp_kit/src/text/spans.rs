//! Token positions of chat message ranges ("user 1 through assistant 1"), for steering a part of
//! a conversation.
//!
//! Messages are counted per role from 1 in the rendered chat ([`MessageRef`]: `user 1`,
//! `assistant 2`, `system`). A range covers the content tokens of every rendered message from the
//! first to the last reference, in order; with `with_template` also the template tokens between
//! them (end-of-turn marks and the next turn's header), i.e. one contiguous span from the first
//! message's first content token to the last message's last one. The header before the first
//! message and the end mark after the last are never included.
use crate::text::chat::{RenderedChat, Role};
use anyhow::{bail, ensure, Context, Result};
use std::fmt;
use std::str::FromStr;

/// The `nth` (1-based) rendered message of `role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageRef {
    pub role: Role,
    pub nth: usize,
}

impl MessageRef {
    pub fn new(role: Role, nth: usize) -> Self {
        Self { role, nth }
    }
    pub fn user(nth: usize) -> Self {
        Self::new(Role::User, nth)
    }
    pub fn assistant(nth: usize) -> Self {
        Self::new(Role::Assistant, nth)
    }
    pub fn system() -> Self {
        Self::new(Role::System, 1)
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.nth)
    }
}

impl FromStr for MessageRef {
    type Err = anyhow::Error;
    /// `user 1`, `user1`, `assistant 2`, `system` (= `system 1`).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        let split = t.find(|c: char| c.is_ascii_digit()).unwrap_or(t.len());
        let role: Role = t[..split].trim().parse().with_context(|| format!("message reference {s:?}"))?;
        let nth = if split == t.len() {
            1
        } else {
            t[split..].trim().parse::<usize>().with_context(|| format!("message reference {s:?}: bad number"))?
        };
        ensure!(nth >= 1, "message reference {s:?}: messages are counted from 1");
        Ok(Self { role, nth })
    }
}

impl RenderedChat {
    /// Index into [`RenderedChat::messages`] of a message reference.
    pub fn find_message(&self, m: MessageRef) -> Result<usize> {
        let mut seen = 0;
        for (i, span) in self.messages.iter().enumerate() {
            if span.role == m.role {
                seen += 1;
                if seen == m.nth {
                    return Ok(i);
                }
            }
        }
        bail!("{m}: the rendered chat has {seen} {} message(s)", m.role)
    }

    /// Token indices of the messages `first` through `last` (see the module docs), increasing.
    pub fn message_range(&self, first: MessageRef, last: MessageRef, with_template: bool) -> Result<Vec<usize>> {
        let (a, b) = (self.find_message(first)?, self.find_message(last)?);
        ensure!(a <= b, "message range {first} .. {last}: {last} comes before {first} in the chat");
        if with_template {
            let start = self.messages[a].tokens.start;
            let end = self.messages[b].tokens.end;
            return Ok((start..end.max(start)).collect());
        }
        let mut out: Vec<usize> = self.messages[a..=b].iter().flat_map(|m| m.tokens.clone()).collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}
