//! Per-extension source rules and dial rules: the types the XDP program and
//! the controller share (issue 12, items 3 and 4).
//!
//! # How a request is matched, and why so
//! - **Users to rules**: the users a request names (To, From, the
//!   Authorization username) are matched against every extension rule's
//!   `users` by one automaton ([`UserTable`]), stepped by the SIP reader
//!   ([`crate::sip_scan`]) on each byte it copies of a user: a byte costs two
//!   loads, whatever the number of names and patterns, and no map lookup.
//!   A hash of exact names would cost a lookup per user (three per
//!   REGISTER) and still need a loop over the patterns (`2xx`,
//!   `sales-*`); the automaton does both in the loop the reader runs
//!   anyway. Its accepting states hold a mask of rules (bit i: rule i), so
//!   a user named by several rules is known at once.
//! - **The check**: one LPM lookup ([`SipPermit`] in `SIP_PERMIT`, keyed by
//!   policy slot and source address) answers which extension rules and
//!   which dial rules permit the source. Overlapping networks of several
//!   rules are folded into each entry by the controller (an entry's masks
//!   include every rule whose network holds it), so the longest match
//!   answers for every rule at once: however many users a request names,
//!   the check is one lookup, and only for a request that names a
//!   restricted user or dials a blocked prefix.
//! - **Dial prefixes**: one LPM lookup (`SIP_DIAL`, keyed by policy slot
//!   and the Request-URI user's bytes) finds the dial rule of the longest
//!   prefix the dialled number starts with.
//!
//! Both tries are keyed by the policy slot first, so a reload writes the
//! slot not in force and switches with the rest of the policy.
use crate::sip_scan::{SipMethod, SipSummary, USER_BYTES};

/// Extension rules a policy can hold (bits of a `u64` mask).
pub const MAX_EXTENSION_RULES: usize = 64;
/// Dial rules a policy can hold (bits of a `u64` mask).
pub const MAX_DIAL_RULES: usize = 64;
/// Byte classes of the user automaton (class 0: a byte no rule names).
pub const USER_CLASSES: usize = 64;
/// States of the user automaton (0: dead, [`USER_START`]: start).
pub const USER_STATES: usize = 512;
/// The state a user's first byte is read from.
pub const USER_START: u16 = 1;
/// Longest user name or pattern a rule may hold (bytes).
pub const MAX_USER_NAME: usize = 64;
/// Longest dial prefix a rule may hold: the reader keeps [`USER_BYTES`]
/// of the Request-URI user, and a prefix must fit in them.
pub const MAX_DIAL_PREFIX: usize = USER_BYTES;

const _: () = assert!(USER_CLASSES.is_power_of_two());
const _: () = assert!(USER_STATES.is_power_of_two());

/// The automaton matching users to extension rules, compiled by the
/// controller (`sip_users::compile`). Case-insensitive (ASCII): a PBX that
/// folds case must not let `Sales-Bob` past a rule for `sales-*`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UserTable {
    /// Byte -> class (case folded).
    pub class: [u8; 256],
    /// Per state: the rules naming a user that ends in it.
    pub accept: [u64; USER_STATES],
    /// `next[state * USER_CLASSES + class]`.
    pub next: [u16; USER_STATES * USER_CLASSES],
}

impl UserTable {
    pub const EMPTY: UserTable = UserTable {
        class: [0; 256],
        accept: [0; USER_STATES],
        next: [0; USER_STATES * USER_CLASSES],
    };

    #[inline(always)]
    pub fn step(&self, state: u16, byte: u8) -> u16 {
        let class = self.class[byte as usize] as usize & (USER_CLASSES - 1);
        let index = ((state as usize) * USER_CLASSES + class) & (USER_STATES * USER_CLASSES - 1);
        self.next[index]
    }

    /// The rules naming a user that ended in `state`.
    #[inline(always)]
    pub fn rules(&self, state: u16) -> u64 {
        self.accept[state as usize & (USER_STATES - 1)]
    }

    /// The rules naming `user` (already unescaped), as the reader finds them.
    pub fn rules_of(&self, user: &[u8]) -> u64 {
        let mut state = USER_START;
        for &byte in user {
            state = self.step(state, byte);
        }
        self.rules(state)
    }
}

/// [`DialRule::flags`]: learned peers may dial the rule's prefixes.
pub const DIAL_PERMIT_PEERS: u32 = 1;

/// What the XDP program needs of a dial rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DialRule {
    /// How long a source dialling the rule's prefixes from elsewhere is
    /// banned (0: its INVITE is dropped, the source is not banned).
    pub ban_ns: u64,
    pub flags: u32,
    /// INVITEs to the rule's prefixes a permitted source may send in a
    /// sliding minute ([`DIAL_WINDOW_NS`]); 0: no limit.
    pub calls_per_minute: u32,
}

/// The window of [`DialRule::calls_per_minute`].
pub const DIAL_WINDOW_NS: u64 = 60_000_000_000;
/// Rate-state groups of the dial rules' windows (one per source and dial
/// rule, window 0 of the entry): far above the rate rules' groups
/// (`crate::rate_group`, 0..=3).
pub const DIAL_RATE_GROUP: u32 = 0x8000_0000;

/// The rate-state group of dial rule `rule`'s call counts.
#[inline(always)]
pub const fn dial_rate_group(rule: u8) -> u32 {
    DIAL_RATE_GROUP | rule as u32
}

/// `PatternTable::sip_rules` bit: extension rules are set.
pub const RULES_EXTENSION: u32 = 1;
/// `PatternTable::sip_rules` bit: dial rules are set.
pub const RULES_DIAL: u32 = 2;

/// Value of `SIP_PERMIT`: the rules whose `permit` networks hold the key's
/// network (bit i: rule i).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipPermit {
    pub extensions: u64,
    pub dial: u64,
}
map_type!(SipPermit, 16);

impl SipPermit {
    pub const NONE: SipPermit = SipPermit {
        extensions: 0,
        dial: 0,
    };
}

/// Bytes of a `SIP_PERMIT` key's data: the policy slot, then the address
/// (IPv4-mapped for IPv4).
pub const PERMIT_KEY_BYTES: usize = 17;
/// Bytes of a `SIP_DIAL` key's data: the policy slot, then the number.
pub const DIAL_KEY_BYTES: usize = 1 + MAX_DIAL_PREFIX;

/// The LPM prefix length of a `SIP_PERMIT` key for an address network of
/// `prefix_len` bits (of the IPv4-mapped form for IPv4).
pub const fn permit_prefix_len(mapped_prefix_len: u32) -> u32 {
    8 + mapped_prefix_len
}

/// The LPM prefix length of a `SIP_DIAL` key for a number of `digits` bytes.
pub const fn dial_prefix_len(digits: usize) -> u32 {
    8 + 8 * digits as u32
}

/// Which users of a request an extension rule restricts, by method:
/// REGISTER's To (the address of record registered), From and
/// Authorization username; INVITE's and SUBSCRIBE's From and Authorization
/// username. Their To is the party called or watched, not the one acting:
/// a remote phone calling a restricted extension, or watching it (BLF),
/// must not be dropped for it. Other methods are not restricted.
pub const USER_TO: usize = 0;
pub const USER_FROM: usize = 1;
pub const USER_AUTH: usize = 2;

/// The rules restricting user `which` ([`USER_TO`], [`USER_FROM`],
/// [`USER_AUTH`]) of a request read as `summary`.
#[inline(always)]
pub fn named_rules(summary: &SipSummary, which: usize) -> u64 {
    let restricted = match summary.method {
        SipMethod::Register => true,
        SipMethod::Invite | SipMethod::Subscribe => which != USER_TO,
        _ => false,
    };
    if !restricted {
        return 0;
    }
    match which {
        USER_TO => summary.to_rules,
        USER_FROM => summary.from_rules,
        _ => summary.auth_rules,
    }
}

/// True if the request is one a dial rule judges: an INVITE whose
/// Request-URI names a user (the number dialled).
#[inline(always)]
pub fn dials(summary: &SipSummary) -> bool {
    summary.method == SipMethod::Invite && summary.request_user.present()
}

/// The lowest rule number in a non-zero `mask` (for logs and bans).
#[inline(always)]
pub fn first_rule(mask: u64) -> u8 {
    // A binary search: BPF has no count-trailing-zeros instruction.
    let mut mask = mask;
    let mut rule = 0u8;
    if mask & 0xffff_ffff == 0 {
        rule += 32;
        mask >>= 32;
    }
    if mask & 0xffff == 0 {
        rule += 16;
        mask >>= 16;
    }
    if mask & 0xff == 0 {
        rule += 8;
        mask >>= 8;
    }
    if mask & 0xf == 0 {
        rule += 4;
        mask >>= 4;
    }
    if mask & 0x3 == 0 {
        rule += 2;
        mask >>= 2;
    }
    if mask & 0x1 == 0 {
        rule += 1;
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rule_is_the_lowest_bit() {
        for bit in 0..64 {
            assert_eq!(first_rule(1u64 << bit), bit as u8);
            assert_eq!(first_rule(u64::MAX << bit), bit as u8);
        }
    }
}
