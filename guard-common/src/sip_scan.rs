//! The bounded SIP request reader: one implementation for the XDP program
//! and the host tests.
//!
//! It reads the start of a SIP request (at most [`SCAN_BYTES`]) one byte at
//! a time through [`SipScan::step`], a state machine with no recursion, no
//! loops of its own and fixed-size outputs: every write index is checked
//! against its array's length, so the verifier sees bounded accesses and the
//! host never panics. The XDP program feeds it one byte per `bpf_loop`
//! iteration from a per-CPU copy of the payload, passing over the bytes of
//! headers nobody reads ([`SipScan::skips`], then [`SipScan::step_classed`]);
//! the tests run that same loop and [`scan`], which reads 8-byte chunks
//! ([`SipScan::step_chunk`], a SWAR test per chunk of an unread header), and
//! check that both agree.
//!
//! It reads the method, the Request-URI user, the From and To users, the
//! Authorization/Proxy-Authorization username and a prefix of the
//! User-Agent, and steps the scanner-fingerprint automaton ([`PatternTable`])
//! over the values of User-Agent, From, To and Contact. Header names are
//! case-insensitive and compact forms count (`f`, `t`, `m`; User-Agent and
//! the Authorization headers have none); folded lines and LF-only line ends
//! are read. What it cannot read is [`ScanStatus::Unreadable`]: that is never
//! a reason to drop a packet, only to leave it to the controller.

use crate::sip_rules::{DialRule, UserTable, MAX_DIAL_RULES, USER_START};

/// Bytes of a payload the reader looks at (the per-CPU copy's size).
pub const SCAN_BYTES: usize = 2048;
/// Bytes kept of each user name.
pub const USER_BYTES: usize = 32;
/// Bytes kept of the User-Agent.
pub const AGENT_BYTES: usize = 64;

/// Fields the fingerprint automaton reads.
pub const PATTERN_FIELDS: usize = 4;
/// Byte classes of the automaton: class 0 is every byte no pattern uses,
/// [`START_CLASS`] is the start of a value (for prefix patterns).
pub const PATTERN_CLASSES: usize = 64;
pub const START_CLASS: u8 = 1;
/// States of the automaton; state 0 is the dead state of a field without patterns.
pub const PATTERN_STATES: usize = 512;

const _: () = assert!(PATTERN_CLASSES.is_power_of_two());
const _: () = assert!(PATTERN_STATES.is_power_of_two());

/// Where a fingerprint pattern looks.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternField {
    UserAgent = 0,
    From = 1,
    To = 2,
    Contact = 3,
}

impl PatternField {
    pub const ALL: [PatternField; PATTERN_FIELDS] = [
        PatternField::UserAgent,
        PatternField::From,
        PatternField::To,
        PatternField::Contact,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PatternField::UserAgent => "user_agent",
            PatternField::From => "from",
            PatternField::To => "to",
            PatternField::Contact => "contact",
        }
    }
}

/// The scanner fingerprints, compiled by the controller into an
/// Aho-Corasick automaton over case-folded byte classes (one root per
/// field), which the XDP program steps once per byte of a watched value:
/// two loads and a mask per byte, whatever the number of patterns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PatternTable {
    /// How long a source whose request matched stays banned (0: its packet
    /// is dropped, the source is not banned).
    pub ban_ns: u64,
    /// Non-zero when any pattern is set: only then does the XDP program
    /// copy and read SIP requests.
    pub active: u32,
    pub _pad: u32,
    /// Byte -> class (case folded).
    pub class: [u8; 256],
    /// Per field: the state after [`START_CLASS`] from the field's root
    /// (0 when the field has no patterns).
    pub start: [u16; PATTERN_FIELDS],
    /// Per state: the number (1-based) of the pattern that ends there, 0 if none.
    pub accept: [u16; PATTERN_STATES],
    /// `next[state * PATTERN_CLASSES + class]`.
    pub next: [u16; PATTERN_STATES * PATTERN_CLASSES],
    /// The extension rules' user automaton (see [`crate::sip_rules`]).
    pub users: UserTable,
    /// The dial rules, by index.
    pub dial: [DialRule; MAX_DIAL_RULES],
    /// [`crate::sip_rules::RULES_EXTENSION`] | [`crate::sip_rules::RULES_DIAL`]:
    /// which rules the policy has.
    pub sip_rules: u32,
    pub _pad3: u32,
}

map_type!(PatternTable, 137760);

impl PatternTable {
    /// No patterns: every field stays in the dead state 0.
    pub const EMPTY: PatternTable = PatternTable {
        ban_ns: 0,
        active: 0,
        _pad: 0,
        class: [0; 256],
        start: [0; PATTERN_FIELDS],
        accept: [0; PATTERN_STATES],
        next: [0; PATTERN_STATES * PATTERN_CLASSES],
        users: UserTable::EMPTY,
        dial: [DialRule {
            ban_ns: 0,
            flags: 0,
            calls_per_minute: 0,
        }; MAX_DIAL_RULES],
        sip_rules: 0,
        _pad3: 0,
    };

    #[inline(always)]
    fn step(&self, state: u16, class: u8) -> u16 {
        let class = class as usize & (PATTERN_CLASSES - 1);
        let index =
            ((state as usize) * PATTERN_CLASSES + class) & (PATTERN_STATES * PATTERN_CLASSES - 1);
        self.next[index]
    }

    #[inline(always)]
    fn accepts(&self, state: u16) -> u16 {
        self.accept[state as usize & (PATTERN_STATES - 1)]
    }
}

/// A SIP request method.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipMethod {
    /// No request line read (yet).
    None = 0,
    /// A method token sipguard has no name for.
    Other = 1,
    Register = 2,
    Invite = 3,
    Options = 4,
    Subscribe = 5,
    Notify = 6,
    Message = 7,
    Ack = 8,
    Bye = 9,
    Cancel = 10,
    Info = 11,
    Prack = 12,
    Update = 13,
    Refer = 14,
    Publish = 15,
}

/// How far the reader got.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanStatus {
    /// Still reading, or the input ended before the blank line that ends
    /// the headers (a message over [`SCAN_BYTES`], or split across TCP
    /// segments): what was read is valid, what was not is unknown.
    Partial = 0,
    /// The headers were read to their end.
    Complete = 1,
    /// Not a SIP request the reader understands (a response, another
    /// protocol, a malformed start line or header line).
    Unreadable = 2,
    /// A fingerprint matched; reading stopped there.
    Matched = 3,
}

impl ScanStatus {
    pub const COUNT: u32 = 4;
    pub const ALL: [ScanStatus; 4] = [
        ScanStatus::Partial,
        ScanStatus::Complete,
        ScanStatus::Unreadable,
        ScanStatus::Matched,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ScanStatus::Partial => "partial",
            ScanStatus::Complete => "complete",
            ScanStatus::Unreadable => "unreadable",
            ScanStatus::Matched => "fingerprint",
        }
    }
}

/// [`SipField::flags`]: the field was found.
pub const FIELD_PRESENT: u8 = 1;
/// [`SipField::flags`]: the value was longer than the copy.
pub const FIELD_TRUNCATED: u8 = 2;
/// [`SipField::flags`]: the header came again; the first one was kept.
pub const FIELD_DUPLICATE: u8 = 4;

/// A bounded copy of one value. Bytes past `len` are left from earlier
/// messages (resetting them would cost the kernel a store per byte), so
/// equality compares the copied bytes only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Eq)]
pub struct SipField<const N: usize> {
    /// Bytes in `bytes` (at most `N`).
    pub len: u8,
    pub flags: u8,
    pub bytes: [u8; N],
}

impl<const N: usize> SipField<N> {
    pub const EMPTY: Self = SipField {
        len: 0,
        flags: 0,
        bytes: [0; N],
    };

    /// The copied bytes.
    #[inline(always)]
    pub fn value(&self) -> &[u8] {
        &self.bytes[..(self.len as usize).min(N)]
    }

    pub const fn present(&self) -> bool {
        self.flags & FIELD_PRESENT != 0
    }

    /// Present and copied whole.
    pub const fn complete(&self) -> bool {
        self.flags & (FIELD_PRESENT | FIELD_TRUNCATED) == FIELD_PRESENT
    }

    #[inline(always)]
    fn push(&mut self, byte: u8) {
        let len = self.len as usize;
        if len < N {
            self.bytes[len] = byte;
            self.len += 1;
        } else {
            self.flags |= FIELD_TRUNCATED;
        }
    }

    #[inline(always)]
    fn clear(&mut self) {
        self.len = 0;
        self.flags &= FIELD_DUPLICATE;
    }
}

impl<const N: usize> PartialEq for SipField<N> {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.flags == other.flags && self.value() == other.value()
    }
}

/// What the reader found.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipSummary {
    pub status: ScanStatus,
    pub method: SipMethod,
    /// The field the fingerprint matched in (a [`PatternField`]), if `pattern != 0`.
    pub pattern_field: u8,
    pub _pad: u8,
    /// The matched fingerprint's number (1-based), 0 if none.
    pub pattern: u16,
    pub _pad2: u16,
    pub request_user: SipField<USER_BYTES>,
    pub from_user: SipField<USER_BYTES>,
    pub to_user: SipField<USER_BYTES>,
    pub auth_user: SipField<USER_BYTES>,
    pub user_agent: SipField<AGENT_BYTES>,
    /// The extension rules naming the To, From and Authorization users
    /// (bit i: rule i; see [`crate::sip_rules`]), whatever the method.
    pub to_rules: u64,
    pub from_rules: u64,
    pub auth_rules: u64,
}

impl SipSummary {
    pub const EMPTY: SipSummary = SipSummary {
        status: ScanStatus::Partial,
        method: SipMethod::None,
        pattern_field: 0,
        _pad: 0,
        pattern: 0,
        _pad2: 0,
        request_user: SipField::EMPTY,
        from_user: SipField::EMPTY,
        to_user: SipField::EMPTY,
        auth_user: SipField::EMPTY,
        user_agent: SipField::EMPTY,
        to_rules: 0,
        from_rules: 0,
        auth_rules: 0,
    };
}

// Where the reader is.
const P_METHOD: u8 = 0;
const P_URI: u8 = 1;
const P_VERSION: u8 = 2;
const P_VERSION_END: u8 = 3;
const P_LINE_START: u8 = 4;
const P_LINE_START_CR: u8 = 5;
const P_NAME: u8 = 6;
const P_NAME_END: u8 = 7;
const P_VALUE: u8 = 8;
const P_SKIP: u8 = 9;
const P_DONE: u8 = 10;

// The header being read.
const H_OTHER: u8 = 0;
const H_FROM: u8 = 1;
const H_TO: u8 = 2;
const H_CONTACT: u8 = 3;
const H_AGENT: u8 = 4;
const H_AUTH: u8 = 5;

// URI user extraction (Request-URI, From, To).
const U_SEEK: u8 = 0;
const U_QUOTED: u8 = 1;
const U_QUOTED_ESCAPE: u8 = 2;
const U_USER: u8 = 3;
const U_DONE: u8 = 4;
/// After `sip:user:` - a password, until `@` (the user stands) or the end
/// of the URI (there was no user: `sip:host:5060`).
const U_PASSWORD: u8 = 5;

// Authorization username extraction.
const A_SCHEME: u8 = 0;
const A_PARAM_START: u8 = 1;
const A_PARAM_NAME: u8 = 2;
const A_AFTER_NAME: u8 = 3;
const A_VALUE_START: u8 = 4;
const A_QUOTED: u8 = 5;
const A_QUOTED_ESCAPE: u8 = 6;
const A_TOKEN: u8 = 7;
const A_SKIP: u8 = 8;
const A_SKIP_QUOTED: u8 = 9;
const A_SKIP_ESCAPE: u8 = 10;
const A_DONE: u8 = 11;

const USERNAME: &[u8; 8] = b"username";
const VERSION: &[u8; 7] = b"sip/2.0";

/// A name of up to 24 bytes packed into three little-endian words.
const fn pack(name: &[u8]) -> [u64; 3] {
    let mut words = [0u64; 3];
    let mut i = 0;
    while i < name.len() {
        words[i / 8] |= (name[i] as u64) << ((i % 8) * 8);
        i += 1;
    }
    words
}

const N_FROM: [u64; 3] = pack(b"from");
const N_F: [u64; 3] = pack(b"f");
const N_TO: [u64; 3] = pack(b"to");
const N_T: [u64; 3] = pack(b"t");
const N_CONTACT: [u64; 3] = pack(b"contact");
const N_M: [u64; 3] = pack(b"m");
const N_AGENT: [u64; 3] = pack(b"user-agent");
const N_AUTH: [u64; 3] = pack(b"authorization");
const N_PROXY_AUTH: [u64; 3] = pack(b"proxy-authorization");
const NAME_BYTES: u8 = 24;

const METHODS: [([u64; 2], SipMethod); 14] = [
    (pack2(b"REGISTER"), SipMethod::Register),
    (pack2(b"INVITE"), SipMethod::Invite),
    (pack2(b"OPTIONS"), SipMethod::Options),
    (pack2(b"SUBSCRIBE"), SipMethod::Subscribe),
    (pack2(b"NOTIFY"), SipMethod::Notify),
    (pack2(b"MESSAGE"), SipMethod::Message),
    (pack2(b"ACK"), SipMethod::Ack),
    (pack2(b"BYE"), SipMethod::Bye),
    (pack2(b"CANCEL"), SipMethod::Cancel),
    (pack2(b"INFO"), SipMethod::Info),
    (pack2(b"PRACK"), SipMethod::Prack),
    (pack2(b"UPDATE"), SipMethod::Update),
    (pack2(b"REFER"), SipMethod::Refer),
    (pack2(b"PUBLISH"), SipMethod::Publish),
];
const METHOD_BYTES: u8 = 16;

const fn pack2(name: &[u8]) -> [u64; 2] {
    let words = pack(name);
    [words[0], words[1]]
}

/// Stores `value` in a store of its own. Adjacent stores of zeros are
/// otherwise merged by LLVM into a call to memset, which BPF runs byte by
/// byte in a subprogram of its own.
#[inline(always)]
fn set<T: Copy>(place: &mut T, value: T) {
    // SAFETY: `place` is a valid, exclusive reference.
    unsafe { core::ptr::write_volatile(place, value) }
}

/// Word by word: a slice comparison would become a call to memcmp.
#[inline(always)]
const fn same(a: &[u64; 3], b: &[u64; 3]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2]
}

#[inline(always)]
const fn lower(byte: u8) -> u8 {
    if byte.is_ascii_uppercase() {
        byte | 0x20
    } else {
        byte
    }
}

#[inline(always)]
const fn is_space(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// RFC 3261 `token` characters (methods and header names).
#[inline(always)]
const fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// True if any of the eight bytes of `word` is `byte` (SWAR; may also say
/// true for a byte above a true match, never false for a match).
#[inline(always)]
const fn has_byte(word: u64, byte: u8) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * byte as u64);
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// The reader's state; reset it with [`SipScan::reset`] before each message.
#[derive(Clone, Copy, Debug)]
pub struct SipScan {
    pub out: SipSummary,
    phase: u8,
    header: u8,
    /// Bytes of the name or method read so far.
    name_len: u8,
    /// Set after a folded line: skip its leading blanks, then read one space.
    fold: u8,
    /// Bytes of the value seen (leading blanks are skipped).
    value_len: u16,
    name: [u64; 3],
    // Sub-states of the value being read.
    uri: u8,
    uri_bracketed: u8,
    scheme_len: u8,
    auth: u8,
    auth_index: u8,
    scheme: u32,
    /// The automaton's state in the current value.
    dfa: u16,
    /// The user automaton's state in the user being copied.
    user_dfa: u16,
    /// A `%` escape in a URI user: 0 none, 1 after `%`, 2 after its first
    /// hex digit (kept in `esc_first`).
    esc: u8,
    esc_first: u8,
}

impl Default for SipScan {
    fn default() -> Self {
        Self::new()
    }
}

impl SipScan {
    pub const fn new() -> Self {
        SipScan {
            out: SipSummary::EMPTY,
            phase: P_METHOD,
            header: H_OTHER,
            name_len: 0,
            fold: 0,
            value_len: 0,
            name: [0; 3],
            uri: U_SEEK,
            uri_bracketed: 0,
            scheme_len: 0,
            auth: A_SCHEME,
            auth_index: 0,
            scheme: 0,
            dfa: 0,
            user_dfa: 0,
            esc: 0,
            esc_first: 0,
        }
    }

    /// Makes the reader ready for a new message. Only the lengths and flags
    /// of the copies are reset, not their bytes (cheaper in the kernel).
    #[inline(always)]
    pub fn reset(&mut self) {
        let out = &mut self.out;
        out.status = ScanStatus::Partial;
        out.method = SipMethod::None;
        out.pattern_field = 0;
        out.pattern = 0;
        out.request_user.len = 0;
        out.request_user.flags = 0;
        out.from_user.len = 0;
        out.from_user.flags = 0;
        out.to_user.len = 0;
        out.to_user.flags = 0;
        out.auth_user.len = 0;
        out.auth_user.flags = 0;
        out.user_agent.len = 0;
        out.user_agent.flags = 0;
        out.to_rules = 0;
        out.from_rules = 0;
        out.auth_rules = 0;
        self.phase = P_METHOD;
        self.header = H_OTHER;
        self.name_len = 0;
        self.fold = 0;
        self.value_len = 0;
        set(&mut self.name[0], 0);
        set(&mut self.name[1], 0);
        set(&mut self.name[2], 0);
        self.start_uri();
        // The Request-URI ends at the space: a ';' before it may be the user's.
        self.uri_bracketed = 1;
    }

    /// Whether more input can change the result.
    #[inline(always)]
    pub fn wants_more(&self) -> bool {
        self.phase != P_DONE
    }

    /// The input ended (at the end of the payload or of the copy).
    #[inline(always)]
    pub fn finish(&mut self) {
        if self.phase == P_DONE {
            return;
        }
        if self.phase < P_LINE_START {
            // Not even a whole request line.
            self.unreadable();
            return;
        }
        // A user copy still open stays unknown (not present); a User-Agent
        // still open may have been cut.
        if self.header == H_AGENT {
            self.out.user_agent.flags |= FIELD_TRUNCATED;
        }
        self.phase = P_DONE;
    }

    /// True if `byte` can be passed over without reading it: inside a
    /// header nobody reads, anything but a line feed changes nothing.
    #[inline(always)]
    pub fn skips(&self, byte: u8) -> bool {
        self.phase == P_SKIP && byte != b'\n'
    }

    /// True if the eight bytes of `chunk` can be passed over without
    /// reading them one by one: inside a header nobody reads, a chunk
    /// without a line end changes nothing (one SWAR test).
    #[inline(always)]
    pub fn skips_chunk(&self, chunk: u64) -> bool {
        self.phase == P_SKIP && !has_byte(chunk, b'\n')
    }

    /// Reads up to eight bytes (`chunk`'s first `count`, in order), as the
    /// XDP program does: [`SipScan::skips_chunk`] for a whole chunk, else
    /// [`SipScan::step`] per byte. Returns false once nothing more is wanted.
    #[inline(always)]
    pub fn step_chunk(&mut self, chunk: u64, count: usize, table: &PatternTable) -> bool {
        if count == 8 && self.skips_chunk(chunk) {
            return true;
        }
        let mut i = 0;
        while i < 8 {
            if i >= count || !self.step((chunk >> (i * 8)) as u8, table) {
                break;
            }
            i += 1;
        }
        self.phase != P_DONE
    }

    /// Reads one byte. Returns false once nothing more is wanted.
    ///
    /// The XDP program calls it from one place only (a `bpf_loop` body):
    /// called eight times per chunk, the verifier's states multiplied past
    /// its one-million-instruction limit.
    #[inline(always)]
    pub fn step(&mut self, byte: u8, table: &PatternTable) -> bool {
        self.step_classed(byte, table.class[byte as usize], table)
    }

    /// [`SipScan::step`] with the byte's class already looked up. The XDP
    /// program looks it up from a second load of the byte: a byte that is
    /// both compared with many constants and used as an index is a value the
    /// verifier must track precisely, and its states then never merge.
    #[inline(always)]
    pub fn step_classed(&mut self, byte: u8, class: u8, table: &PatternTable) -> bool {
        match self.phase {
            P_METHOD => self.method_byte(byte),
            P_URI => self.request_uri_byte(byte, table),
            P_VERSION => self.version_byte(byte),
            P_VERSION_END => match byte {
                b'\r' => {}
                b'\n' => self.phase = P_LINE_START,
                _ => self.unreadable(),
            },
            P_LINE_START => self.line_start(byte, table),
            P_LINE_START_CR => {
                if byte == b'\n' {
                    self.out.status = ScanStatus::Complete;
                    self.phase = P_DONE;
                } else {
                    self.unreadable();
                }
            }
            P_NAME => self.name_byte(byte, table),
            P_NAME_END => match byte {
                b':' => self.start_value(table),
                b' ' | b'\t' => {}
                _ => self.unreadable(),
            },
            P_VALUE => self.value_byte(byte, class, table),
            P_SKIP if byte == b'\n' => self.end_line(table),
            _ => {}
        }
        self.phase != P_DONE
    }

    #[inline(always)]
    fn unreadable(&mut self) {
        self.out.status = ScanStatus::Unreadable;
        self.phase = P_DONE;
    }

    #[inline(always)]
    fn method_byte(&mut self, byte: u8) {
        if byte == b' ' && self.name_len > 0 {
            self.out.method = method_of(self.name[0], self.name[1]);
            self.phase = P_URI;
            self.name_len = 0;
            return;
        }
        // A response ("SIP/2.0 200 OK") fails here at the '/'.
        if !is_token(byte) || self.name_len >= METHOD_BYTES {
            self.unreadable();
            return;
        }
        self.push_name(byte);
    }

    #[inline(always)]
    fn request_uri_byte(&mut self, byte: u8, table: &PatternTable) {
        match byte {
            b' ' => {
                if self.value_len == 0 {
                    // RFC 3261 allows exactly one space; be lenient.
                    return;
                }
                self.end_uri_user(H_OTHER, table);
                self.phase = P_VERSION;
                self.name_len = 0;
            }
            b'\r' | b'\n' | b'\t' => self.unreadable(),
            _ => {
                self.value_len = self.value_len.saturating_add(1);
                self.uri_byte(byte, H_OTHER, table);
            }
        }
    }

    #[inline(always)]
    fn version_byte(&mut self, byte: u8) {
        let index = self.name_len as usize;
        if index < VERSION.len() && lower(byte) == VERSION[index] {
            self.name_len += 1;
            if self.name_len as usize == VERSION.len() {
                self.phase = P_VERSION_END;
            }
        } else {
            self.unreadable();
        }
    }

    #[inline(always)]
    fn line_start(&mut self, byte: u8, table: &PatternTable) {
        match byte {
            b'\r' => self.phase = P_LINE_START_CR,
            b'\n' => {
                self.out.status = ScanStatus::Complete;
                self.phase = P_DONE;
            }
            b' ' | b'\t' => {
                // A folded line continues the header before it.
                if self.header == H_OTHER {
                    self.phase = P_SKIP;
                } else {
                    self.phase = P_VALUE;
                    self.fold = 1;
                }
            }
            _ => {
                self.header = H_OTHER;
                set(&mut self.name[0], 0);
                set(&mut self.name[1], 0);
                set(&mut self.name[2], 0);
                set(&mut self.name_len, 0);
                self.phase = P_NAME;
                self.name_byte(byte, table);
            }
        }
    }

    #[inline(always)]
    fn name_byte(&mut self, byte: u8, table: &PatternTable) {
        match byte {
            b':' if self.name_len > 0 => self.start_value(table),
            b' ' | b'\t' if self.name_len > 0 => self.phase = P_NAME_END,
            _ if is_token(byte) => {
                if self.name_len < NAME_BYTES {
                    self.push_name(lower(byte));
                } else {
                    // Longer than any name we read: some other header.
                    self.name_len = NAME_BYTES + 1;
                }
            }
            _ => self.unreadable(),
        }
    }

    #[inline(always)]
    fn push_name(&mut self, byte: u8) {
        let len = self.name_len as usize;
        let shifted = (byte as u64) << ((len % 8) * 8);
        match len / 8 {
            0 => self.name[0] |= shifted,
            1 => self.name[1] |= shifted,
            2 => self.name[2] |= shifted,
            _ => {}
        }
        self.name_len += 1;
    }

    #[inline(always)]
    fn start_value(&mut self, table: &PatternTable) {
        let name = self.name;
        let header = if self.name_len > NAME_BYTES {
            H_OTHER
        } else if same(&name, &N_FROM) || same(&name, &N_F) {
            H_FROM
        } else if same(&name, &N_TO) || same(&name, &N_T) {
            H_TO
        } else if same(&name, &N_CONTACT) || same(&name, &N_M) {
            H_CONTACT
        } else if same(&name, &N_AGENT) {
            H_AGENT
        } else if same(&name, &N_AUTH) || same(&name, &N_PROXY_AUTH) {
            H_AUTH
        } else {
            H_OTHER
        };
        self.header = header;
        set(&mut self.value_len, 0);
        set(&mut self.fold, 0);
        self.start_uri();
        set(&mut self.auth, A_SCHEME);
        set(&mut self.auth_index, 0);
        let field = match header {
            H_FROM => PatternField::From,
            H_TO => PatternField::To,
            H_CONTACT => PatternField::Contact,
            H_AGENT => PatternField::UserAgent,
            H_AUTH => {
                self.dfa = 0;
                if self.out.auth_user.flags & FIELD_PRESENT != 0 {
                    // Credentials for a second realm: the first username counts.
                    self.out.auth_user.flags |= FIELD_DUPLICATE;
                    self.phase = P_SKIP;
                } else {
                    self.phase = P_VALUE;
                }
                return;
            }
            _ => {
                self.dfa = 0;
                self.phase = P_SKIP;
                return;
            }
        };
        self.dfa = table.start[field as usize];
        match header {
            H_FROM if self.out.from_user.flags & FIELD_PRESENT != 0 => {
                self.out.from_user.flags |= FIELD_DUPLICATE;
                self.uri = U_DONE;
            }
            H_TO if self.out.to_user.flags & FIELD_PRESENT != 0 => {
                self.out.to_user.flags |= FIELD_DUPLICATE;
                self.uri = U_DONE;
            }
            H_AGENT => {
                if self.out.user_agent.flags & FIELD_PRESENT != 0 {
                    self.out.user_agent.flags |= FIELD_DUPLICATE;
                } else {
                    self.out.user_agent.flags |= FIELD_PRESENT;
                }
            }
            _ => {}
        }
        if header == H_CONTACT && self.dfa == 0 {
            // Nothing to read in a Contact without patterns.
            self.phase = P_SKIP;
        } else {
            self.phase = P_VALUE;
        }
    }

    #[inline(always)]
    fn value_byte(&mut self, byte: u8, class: u8, table: &PatternTable) {
        match byte {
            b'\n' => {
                self.end_line(table);
                return;
            }
            // Line ends are CRLF or LF; a CR elsewhere is dropped.
            b'\r' => return,
            b' ' | b'\t' if self.value_len == 0 || self.fold != 0 => return,
            _ => {}
        }
        if self.fold != 0 && self.value_len == 0 {
            // A value that starts on a folded line: nothing to fold.
            self.fold = 0;
        }
        if self.fold != 0 {
            // The fold reads as one space.
            self.fold = 0;
            self.value_len = self.value_len.saturating_add(1);
            self.value_char(b' ', table.class[b' ' as usize], table);
            if self.phase != P_VALUE {
                return;
            }
        }
        self.value_len = self.value_len.saturating_add(1);
        self.value_char(byte, class, table);
    }

    /// One byte of the value (blanks of a fold already folded).
    #[inline(always)]
    fn value_char(&mut self, byte: u8, class: u8, table: &PatternTable) {
        let header = self.header;
        if self.dfa != 0 {
            self.dfa = table.step(self.dfa, class);
            let pattern = table.accepts(self.dfa);
            if pattern != 0 {
                self.out.pattern = pattern;
                self.out.pattern_field = match header {
                    H_FROM => PatternField::From as u8,
                    H_TO => PatternField::To as u8,
                    H_CONTACT => PatternField::Contact as u8,
                    _ => PatternField::UserAgent as u8,
                };
                self.out.status = ScanStatus::Matched;
                self.phase = P_DONE;
                return;
            }
        }
        let busy = match header {
            H_FROM | H_TO => {
                if self.uri != U_DONE {
                    self.uri_byte(byte, header, table);
                }
                self.uri != U_DONE
            }
            H_AGENT => {
                if self.out.user_agent.flags & FIELD_DUPLICATE == 0 {
                    self.out.user_agent.push(byte);
                }
                self.out.user_agent.flags & (FIELD_DUPLICATE | FIELD_TRUNCATED) == 0
            }
            H_AUTH => {
                self.auth_byte(byte, table);
                self.auth != A_DONE
            }
            _ => false,
        };
        if !busy && self.dfa == 0 {
            // Nothing more to learn from this header: skip it word by word.
            self.phase = P_SKIP;
        }
    }

    /// The end of a header line. A URI or a token cannot span a fold, so
    /// they end here; a quoted string or a display name may continue.
    #[inline(always)]
    fn end_line(&mut self, table: &PatternTable) {
        match self.header {
            H_FROM | H_TO if self.uri == U_USER || self.uri == U_PASSWORD => {
                self.end_uri_user(self.header, table)
            }
            H_AUTH if self.auth == A_TOKEN => self.auth_found(table),
            _ => {}
        }
        self.phase = P_LINE_START;
    }

    #[inline(always)]
    fn start_uri(&mut self) {
        set(&mut self.uri, U_SEEK);
        set(&mut self.uri_bracketed, 0);
        set(&mut self.scheme, 0);
        set(&mut self.scheme_len, 0);
    }

    /// The copy a URI user goes to: the Request-URI's (`H_OTHER`, read on
    /// the request line), From's or To's.
    #[inline(always)]
    fn user_field(&mut self, header: u8) -> &mut SipField<USER_BYTES> {
        match header {
            H_FROM => &mut self.out.from_user,
            H_TO => &mut self.out.to_user,
            _ => &mut self.out.request_user,
        }
    }

    /// Finds the first `sip:`, `sips:` or `tel:` URI outside quotes (after
    /// `<` in a name-addr) and copies its user part: up to `@` for SIP, the
    /// number for tel. A SIP URI without `@` has no user. `%` escapes are
    /// decoded (RFC 3261 19.1.2), as the PBX decodes them: `%36010` names
    /// user 6010.
    #[inline(always)]
    fn uri_byte(&mut self, byte: u8, header: u8, table: &PatternTable) {
        match self.uri {
            U_SEEK => match byte {
                b'"' => self.uri = U_QUOTED,
                b'<' => {
                    self.uri_bracketed = 1;
                    self.scheme = 0;
                    self.scheme_len = 0;
                }
                b':' => {
                    let scheme = self.scheme;
                    let known = self.scheme_len <= 4
                        && (scheme == SCHEME_SIP || scheme == SCHEME_SIPS || scheme == SCHEME_TEL);
                    if known {
                        self.uri = U_USER;
                        self.user_dfa = USER_START;
                        self.esc = 0;
                        let field = self.user_field(header);
                        field.len = 0;
                        field.flags &= FIELD_DUPLICATE;
                    } else {
                        self.scheme = 0;
                        self.scheme_len = 0;
                    }
                }
                _ if byte.is_ascii_alphabetic() => {
                    if self.scheme_len < 4 {
                        self.scheme = (self.scheme << 8) | lower(byte) as u32;
                    }
                    self.scheme_len = self.scheme_len.saturating_add(1);
                }
                _ => {
                    self.scheme = 0;
                    self.scheme_len = 0;
                }
            },
            U_QUOTED => match byte {
                b'\\' => self.uri = U_QUOTED_ESCAPE,
                b'"' => self.uri = U_SEEK,
                _ => {}
            },
            U_QUOTED_ESCAPE => self.uri = U_QUOTED,
            U_USER => {
                if self.esc != 0 {
                    match hex_value(byte) {
                        Some(low) if self.esc == 2 => {
                            let high = hex_value(self.esc_first).unwrap_or(0);
                            self.esc = 0;
                            self.user_byte(high << 4 | low, header, table);
                            return;
                        }
                        Some(_) => {
                            self.esc_first = byte;
                            self.esc = 2;
                            return;
                        }
                        None => {
                            // Not an escape: the bytes as they came.
                            self.user_byte(b'%', header, table);
                            if self.esc == 2 {
                                self.user_byte(self.esc_first, header, table);
                            }
                            self.esc = 0;
                        }
                    }
                }
                if byte == b'@' && self.scheme != SCHEME_TEL {
                    self.user_found(header, table);
                    self.uri = U_DONE;
                } else if byte == b':' && self.scheme != SCHEME_TEL {
                    // `sip:6010:secret@pbx` names user 6010, as the PBX reads it.
                    self.uri = U_PASSWORD;
                } else if self.ends_user(byte) {
                    self.end_uri_user(header, table);
                } else if byte == b'%' {
                    self.esc = 1;
                } else {
                    self.user_byte(byte, header, table);
                }
            }
            U_PASSWORD => {
                if byte == b'@' {
                    self.user_found(header, table);
                    self.uri = U_DONE;
                } else if self.ends_user(byte) {
                    self.user_field(header).clear();
                    self.uri = U_DONE;
                }
            }
            _ => {}
        }
    }

    /// One byte of a URI user: copied, and stepped through the user automaton.
    #[inline(always)]
    fn user_byte(&mut self, byte: u8, header: u8, table: &PatternTable) {
        self.user_dfa = table.users.step(self.user_dfa, byte);
        self.user_field(header).push(byte);
    }

    /// A URI user was read whole: present if not empty, and the rules
    /// naming it noted.
    #[inline(always)]
    fn user_found(&mut self, header: u8, table: &PatternTable) {
        let rules = table.users.rules(self.user_dfa);
        let field = self.user_field(header);
        if field.len == 0 {
            return;
        }
        field.flags |= FIELD_PRESENT;
        match header {
            H_FROM => self.out.from_rules = rules,
            H_TO => self.out.to_rules = rules,
            _ => {}
        }
    }

    #[inline(always)]
    fn ends_user(&self, byte: u8) -> bool {
        if is_space(byte) || byte == b'>' {
            return true;
        }
        // In brackets (or on the request line) a SIP user may hold ';' and
        // '?'; outside them they start the header's parameters.
        (self.scheme == SCHEME_TEL || self.uri_bracketed == 0) && matches!(byte, b';' | b',' | b'?')
    }

    /// The URI ended before an `@`: a tel URI's number is its user, a SIP
    /// URI has none.
    #[inline(always)]
    fn end_uri_user(&mut self, header: u8, table: &PatternTable) {
        if self.uri == U_USER || self.uri == U_PASSWORD {
            if self.scheme == SCHEME_TEL {
                self.user_found(header, table);
            } else {
                self.user_field(header).clear();
            }
        }
        self.uri = U_DONE;
    }

    /// The `username` parameter of `Digest username="1001", realm=...`.
    #[inline(always)]
    fn auth_byte(&mut self, byte: u8, table: &PatternTable) {
        match self.auth {
            A_SCHEME if is_space(byte) => self.auth = A_PARAM_START,
            A_PARAM_START if !is_space(byte) && byte != b',' => {
                self.auth_index = 0;
                self.auth = A_PARAM_NAME;
                self.auth_name_byte(byte);
            }
            A_PARAM_NAME => self.auth_name_byte(byte),
            A_AFTER_NAME => match byte {
                b'=' => self.auth = A_VALUE_START,
                b' ' | b'\t' => {}
                _ => self.auth_skip_byte(byte),
            },
            A_VALUE_START => match byte {
                b' ' | b'\t' => {}
                b'"' => {
                    self.out.auth_user.clear();
                    self.user_dfa = USER_START;
                    self.auth = A_QUOTED;
                }
                _ => {
                    self.out.auth_user.clear();
                    self.user_dfa = USER_START;
                    self.auth = A_TOKEN;
                    self.auth_byte(byte, table);
                }
            },
            A_QUOTED => match byte {
                b'\\' => self.auth = A_QUOTED_ESCAPE,
                b'"' => self.auth_found(table),
                _ => self.auth_user_byte(byte, table),
            },
            A_QUOTED_ESCAPE => {
                self.auth_user_byte(byte, table);
                self.auth = A_QUOTED;
            }
            A_TOKEN => {
                if is_space(byte) || byte == b',' {
                    self.auth_found(table);
                } else {
                    self.auth_user_byte(byte, table);
                }
            }
            A_SKIP => self.auth_skip_byte(byte),
            A_SKIP_QUOTED => match byte {
                b'\\' => self.auth = A_SKIP_ESCAPE,
                b'"' => self.auth = A_SKIP,
                _ => {}
            },
            A_SKIP_ESCAPE => self.auth = A_SKIP_QUOTED,
            _ => {}
        }
    }

    #[inline(always)]
    fn auth_name_byte(&mut self, byte: u8) {
        let index = self.auth_index as usize;
        if index < USERNAME.len() && lower(byte) == USERNAME[index] {
            self.auth_index += 1;
        } else if index == USERNAME.len() && (is_space(byte) || byte == b'=') {
            self.auth = if byte == b'=' {
                A_VALUE_START
            } else {
                A_AFTER_NAME
            };
        } else {
            self.auth_skip_byte(byte);
        }
    }

    /// Inside a parameter we do not read: only quotes and commas matter.
    #[inline(always)]
    fn auth_skip_byte(&mut self, byte: u8) {
        self.auth = match byte {
            b'"' => A_SKIP_QUOTED,
            b',' => A_PARAM_START,
            _ => A_SKIP,
        };
    }

    #[inline(always)]
    fn auth_user_byte(&mut self, byte: u8, table: &PatternTable) {
        self.user_dfa = table.users.step(self.user_dfa, byte);
        self.out.auth_user.push(byte);
    }

    #[inline(always)]
    fn auth_found(&mut self, table: &PatternTable) {
        if self.out.auth_user.len > 0 {
            self.out.auth_user.flags |= FIELD_PRESENT;
            self.out.auth_rules = table.users.rules(self.user_dfa);
        }
        self.auth = A_DONE;
    }
}

const fn scheme(name: &[u8]) -> u32 {
    let mut value = 0u32;
    let mut i = 0;
    while i < name.len() {
        value = (value << 8) | name[i] as u32;
        i += 1;
    }
    value
}

/// The value of a hex digit.
#[inline(always)]
const fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

const SCHEME_SIP: u32 = scheme(b"sip");
const SCHEME_SIPS: u32 = scheme(b"sips");
const SCHEME_TEL: u32 = scheme(b"tel");

#[inline(always)]
fn method_of(first: u64, second: u64) -> SipMethod {
    let mut i = 0;
    while i < METHODS.len() {
        let (name, method) = METHODS[i];
        if name[0] == first && name[1] == second {
            return method;
        }
        i += 1;
    }
    SipMethod::Other
}

/// Reads `payload` (its first [`SCAN_BYTES`]) as the XDP program does: in
/// 8-byte chunks, then [`SipScan::finish`].
pub fn scan(payload: &[u8], table: &PatternTable) -> SipSummary {
    let mut scanner = SipScan::new();
    scanner.reset();
    let payload = &payload[..payload.len().min(SCAN_BYTES)];
    for chunk in payload.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        if !scanner.step_chunk(u64::from_le_bytes(word), chunk.len(), table) {
            break;
        }
    }
    scanner.finish();
    scanner.out
}

#[cfg(test)]
#[path = "sip_scan_tests.rs"]
mod tests;
