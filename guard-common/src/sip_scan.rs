//! The bounded SIP request reader: one implementation for the XDP program
//! and the host tests.
//!
//! It reads the start of a SIP request (at most [`SCAN_BYTES`]) one byte at
//! a time through [`SipScan::step`], a state machine with no recursion, no
//! loops of its own and fixed-size outputs: every write index is checked
//! against its array's length, so the verifier sees bounded accesses and the
//! host never panics. The XDP program reads a per-CPU copy of the payload,
//! one `bpf_loop` iteration per run of bytes [`SipScan::advance`] can read
//! at once (a header nobody reads up to its line feed, eight bytes of a
//! value only the fingerprint automaton reads, a known header name), else
//! per byte ([`SipScan::skips`], then [`SipScan::step_classed`]). [`scan`]
//! is that loop; the tests check that it agrees with the plain byte loop.
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

/// A state as the table stores it: the byte offset of its row in
/// [`PatternTable::next`] (state number x [`STATE_STRIDE`]), so that a
/// step adds the byte's class offset to it without a multiply.
pub const STATE_STRIDE: u16 = (PATTERN_CLASSES * 2) as u16;
/// [`PatternTable::next`]: the state it leads to is dead or ends a pattern
/// (bit 0, which offsets, all even, leave free).
pub const NEXT_STOPS: u16 = 1;
/// [`PatternTable::next`]: the bits of the state.
pub const NEXT_STATE: u16 = !NEXT_STOPS;

const _: () = assert!(PATTERN_CLASSES.is_power_of_two());
const _: () = assert!(PATTERN_STATES * STATE_STRIDE as usize <= u16::MAX as usize + 1);
// `SipField::push_masked` masks with the length less one.
const _: () = assert!(USER_BYTES.is_power_of_two() && AGENT_BYTES.is_power_of_two());
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
    /// Per field: a lower-case letter every one of its patterns holds (any
    /// case), 0 if none or if a pattern holds a space. A line of a value
    /// without it cannot end a match: the reader passes its bytes without
    /// stepping the automaton (see [`SipScan::quiet`]).
    pub keys: [u8; PATTERN_FIELDS],
    /// Byte -> class (case folded), times two: the class's byte offset in
    /// a row of `next`.
    pub class: [u8; 256],
    /// Per field: the state (as stored, see [`STATE_STRIDE`]) after
    /// [`START_CLASS`] from the field's root (0 when the field has no
    /// patterns).
    pub start: [u16; PATTERN_FIELDS],
    /// Per state number: the number (1-based) of the pattern that ends
    /// there, 0 if none.
    pub accept: [u16; PATTERN_STATES],
    /// The state after a byte, at byte offset `state + class` (both as
    /// stored), with [`NEXT_STOPS`] set where that state is dead (0) or
    /// ends a pattern: a step is an add and a load, and the runs test one
    /// word per byte.
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
        keys: [0; PATTERN_FIELDS],
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

    /// The next state, with [`NEXT_STOPS`].
    #[inline(always)]
    fn step(&self, state: u16, class: u8) -> u16 {
        let index =
            ((state as usize + class as usize) >> 1) & (PATTERN_STATES * PATTERN_CLASSES - 1);
        self.next[index]
    }

    #[inline(always)]
    fn accepts(&self, state: u16) -> u16 {
        self.accept[(state / STATE_STRIDE) as usize & (PATTERN_STATES - 1)]
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

    /// [`SipField::push`] for the runs' loops, where LLVM drops the
    /// verifier's bound (it checks one copy of `len` and indexes with
    /// another): the index is masked after a barrier it cannot see through.
    #[inline(always)]
    fn push_masked(&mut self, byte: u8) {
        let len = opaque_index(self.len as usize);
        if len < N {
            self.bytes[len & (N - 1)] = byte;
            self.len = (len + 1) as u8;
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

/// The high bit of each byte of `word` equal to `byte`: the lowest one is
/// exact, higher ones may be false (a borrow from a match below).
#[inline(always)]
const fn byte_mask(word: u64, byte: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * byte as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The index of the lowest flagged byte of a non-zero [`byte_mask`]
/// (no count-trailing-zeros instruction in BPF: a multiply does it).
#[inline(always)]
const fn first_flagged(mask: u64) -> usize {
    let lowest = mask & mask.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// The low `count` (< 8) bytes of a word set.
#[inline(always)]
const fn low_bytes(count: usize) -> u64 {
    (1u64 << ((count & 7) * 8)).wrapping_sub(1)
}

/// A header name [`SipScan::advance`] reads at once: its bytes and colon
/// (`text`, with `fold` setting bit 5 of its letters, `mask` its bytes),
/// and the header it starts.
#[derive(Clone, Copy)]
struct KnownName {
    text: [u64; 2],
    fold: [u64; 2],
    mask: [u64; 2],
    len: u8,
    /// The header [`SipScan::start_value`] would find for `name`.
    header: u8,
}

const fn known(name: &[u8], header: u8) -> KnownName {
    let mut text = [0u64; 2];
    let mut fold = [0u64; 2];
    let mut mask = [0u64; 2];
    let mut i = 0;
    while i <= name.len() {
        let byte = if i < name.len() { name[i] } else { b':' };
        let shift = (i % 8) * 8;
        text[i / 8] |= (byte as u64) << shift;
        mask[i / 8] |= 0xff << shift;
        if byte.is_ascii_lowercase() {
            fold[i / 8] |= 0x20 << shift;
        }
        i += 1;
    }
    KnownName {
        text,
        fold,
        mask,
        len: name.len() as u8,
        header,
    }
}

/// The headers of common requests (at most 15 bytes, the colon making 16),
/// by their first letter; others go byte by byte.
const K_VIA: KnownName = known(b"via", H_OTHER);
const K_V: KnownName = known(b"v", H_OTHER);
const K_MAX_FORWARDS: KnownName = known(b"max-forwards", H_OTHER);
const K_M: KnownName = known(b"m", H_CONTACT);
const K_TO: KnownName = known(b"to", H_TO);
const K_T: KnownName = known(b"t", H_TO);
const K_FROM: KnownName = known(b"from", H_FROM);
const K_F: KnownName = known(b"f", H_FROM);
const K_CALL_ID: KnownName = known(b"call-id", H_OTHER);
const K_CSEQ: KnownName = known(b"cseq", H_OTHER);
const K_CONTACT: KnownName = known(b"contact", H_CONTACT);
const K_CONTENT_LENGTH: KnownName = known(b"content-length", H_OTHER);
const K_CONTENT_TYPE: KnownName = known(b"content-type", H_OTHER);
const K_I: KnownName = known(b"i", H_OTHER);
const K_L: KnownName = known(b"l", H_OTHER);
const K_AUTHORIZATION: KnownName = known(b"authorization", H_AUTH);
const K_ALLOW: KnownName = known(b"allow", H_OTHER);
const K_USER_AGENT: KnownName = known(b"user-agent", H_AGENT);
const K_SUPPORTED: KnownName = known(b"supported", H_OTHER);
const K_EXPIRES: KnownName = known(b"expires", H_OTHER);

#[inline(always)]
fn is_name(w0: u64, w1: u64, name: &KnownName) -> bool {
    (w0 | name.fold[0]) & name.mask[0] == name.text[0]
        && (w1 | name.fold[1]) & name.mask[1] == name.text[1]
}

/// The known header name (and colon) the line starts with. Tests in a row,
/// by first letter: a list to loop over would sit on the BPF stack.
#[inline(always)]
fn known_name(w0: u64, w1: u64) -> Option<&'static KnownName> {
    let is = |name: &'static KnownName| is_name(w0, w1, name);
    let name = match (w0 as u8) | 0x20 {
        b'v' if is(&K_VIA) => &K_VIA,
        b'v' if is(&K_V) => &K_V,
        b'm' if is(&K_MAX_FORWARDS) => &K_MAX_FORWARDS,
        b'm' if is(&K_M) => &K_M,
        b't' if is(&K_TO) => &K_TO,
        b't' if is(&K_T) => &K_T,
        b'f' if is(&K_FROM) => &K_FROM,
        b'f' if is(&K_F) => &K_F,
        b'c' if is(&K_CALL_ID) => &K_CALL_ID,
        b'c' if is(&K_CSEQ) => &K_CSEQ,
        b'c' if is(&K_CONTACT) => &K_CONTACT,
        b'c' if is(&K_CONTENT_LENGTH) => &K_CONTENT_LENGTH,
        b'c' if is(&K_CONTENT_TYPE) => &K_CONTENT_TYPE,
        b'i' if is(&K_I) => &K_I,
        b'l' if is(&K_L) => &K_L,
        b'a' if is(&K_AUTHORIZATION) => &K_AUTHORIZATION,
        b'a' if is(&K_ALLOW) => &K_ALLOW,
        b'u' if is(&K_USER_AGENT) => &K_USER_AGENT,
        b's' if is(&K_SUPPORTED) => &K_SUPPORTED,
        b'e' if is(&K_EXPIRES) => &K_EXPIRES,
        _ => return None,
    };
    Some(name)
}

/// `value`, which the compiler may no longer assume it knows: on BPF, an
/// asm moving it to itself (an empty one left two line records on one
/// instruction, which the kernel refuses), so that addresses derived from it are not hoisted out of a
/// loop (BPF has ten registers; hoisted addresses go to the stack, which
/// the packet path has nearly used up).
#[inline(always)]
fn opaque<T>(value: &T) -> &T {
    #[cfg(target_arch = "bpf")]
    {
        let mut pointer = value as *const T;
        // SAFETY: a move of the register to itself.
        unsafe {
            core::arch::asm!("{0} = {0}", inout(reg) pointer, options(nomem, nostack, preserves_flags));
            &*pointer
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        value
    }
}

/// Word `k` (< [`SKIP_WORDS`]) from `at` in `buf`: one load, no test.
/// Its bytes past the input are zero, as the caller of
/// [`SipScan::advance`] leaves the [`SCAN_PAD`] bytes after the input.
#[inline(always)]
fn word_at(buf: &[u8; SCAN_BYTES + SCAN_PAD], at: usize, k: usize) -> u64 {
    let offset = (at & (SCAN_BYTES - 1)) + (k & (SKIP_WORDS - 1)) * 8;
    // SAFETY: offset + 8 <= SCAN_BYTES - 1 + (SKIP_WORDS - 1) * 8 + 8,
    // within the padding.
    unsafe { load_word(buf.as_ptr().add(offset)) }
}

/// `value`, unknown to the compiler from here on (see [`opaque`]): a mask
/// applied after it stays.
#[inline(always)]
fn opaque_index(value: usize) -> usize {
    #[cfg(target_arch = "bpf")]
    {
        let mut value = value;
        // SAFETY: a move of the register to itself.
        unsafe {
            core::arch::asm!("{0} = {0}", inout(reg) value, options(nomem, nostack, preserves_flags));
        }
        value
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        value
    }
}

/// The eight bytes at `at`, little endian, whatever its alignment: on BPF
/// one load (the kernel allows unaligned loads from map values where the
/// CPU does; LLVM would otherwise split it into eight byte loads).
///
/// # Safety
/// `at..at + 8` must be readable.
#[inline(always)]
pub unsafe fn load_word(at: *const u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let word: u64;
        // SAFETY: forwarded from the caller.
        unsafe {
            core::arch::asm!(
                "{word} = *(u64 *)({at} + 0)",
                at = in(reg) at,
                word = out(reg) word,
                options(readonly, nostack, preserves_flags),
            );
        }
        word
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        u64::from_le(unsafe { core::ptr::read_unaligned(at as *const u64) })
    }
}

/// Zeroes the eight bytes at `at`, whatever its alignment: on BPF one
/// store (see [`load_word`]).
///
/// # Safety
/// `at..at + 8` must be writable.
#[inline(always)]
pub unsafe fn store_zero_word(at: *mut u8) {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller.
        unsafe {
            core::arch::asm!(
                "*(u64 *)({at} + 0) = 0",
                at = in(reg) at,
                options(nostack, preserves_flags),
            );
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        unsafe { core::ptr::write_unaligned(at as *mut u64, 0) }
    }
}

/// Stores the eight bytes of `word` at `at`, little endian, whatever its
/// alignment: on BPF one store (see [`load_word`]).
///
/// # Safety
/// `at..at + 8` must be writable.
#[inline(always)]
unsafe fn store_word(at: *mut u8, word: u64) {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller.
        unsafe {
            core::arch::asm!(
                "*(u64 *)({at} + 0) = {word}",
                at = in(reg) at,
                word = in(reg) word,
                options(nostack, preserves_flags),
            );
        }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        unsafe { core::ptr::write_unaligned(at as *mut u64, word.to_le()) }
    }
}

/// How many of the first `count` bytes of `word` are plain bytes of a URI
/// user (see [`user_special`]).
#[inline(always)]
fn plain_user_bytes(word: u64, count: usize) -> usize {
    let mut i = 0;
    while i < 8 {
        if i >= count || user_special((word >> (i * 8)) as u8) {
            break;
        }
        i += 1;
    }
    i
}

/// How many of the first `count` bytes of `word` come before `a` or `b`.
#[inline(always)]
fn until_either(word: u64, count: usize, a: u8, b: u8) -> usize {
    let stops = byte_mask(word, a) | byte_mask(word, b);
    if stops != 0 && first_flagged(stops) < count {
        first_flagged(stops)
    } else {
        count
    }
}

/// A SIP URI's start, matched with bit 5 set on its letters.
const SP_LT_SIP: u64 = word(b" <sip:");
const FOLD_SP_LT_SIP: u64 = word(b"\0\0\x20\x20\x20\0");
const LT_SIP: u64 = word(b"<sip:");
const FOLD_LT_SIP: u64 = word(b"\0\x20\x20\x20\0");
const SIP_COLON: u64 = word(b"sip:");
const FOLD_SIP: u64 = word(b"\x20\x20\x20\0");
/// `username`, all letters: folded whole.
const USERNAME_WORD: u64 = word(b"username");
const FOLD_ALL: u64 = 0x2020_2020_2020_2020;

// What [`SipScan::value_run`] does besides the fingerprint automaton.
const RUN_PLAIN: u8 = 0;
const RUN_QUOTED: u8 = 1;
const RUN_USER: u8 = 2;
const RUN_COPY: u8 = 3;
const RUN_SEEK: u8 = 4;
/// A seek that starts at a display name's opening quote.
const RUN_SEEK_QUOTED: u8 = 5;

/// Bytes a URI user's reader acts on (or that end the value or the
/// request line): the user runs stop before them. `;`, `,` and `?` end a
/// user only outside brackets, but stopping at them is always right.
#[inline(always)]
const fn user_special(byte: u8) -> bool {
    const MAP: u64 = 1 << b'\t'
        | 1 << b'\n'
        | 1 << b'\r'
        | 1 << b' '
        | 1 << b'%'
        | 1 << b','
        | 1 << b':'
        | 1 << b';'
        | 1 << b'>'
        | 1 << b'?';
    byte == b'@' || (byte < 64 && (MAP >> byte) & 1 != 0)
}

const fn word(text: &[u8]) -> u64 {
    pack(text)[0]
}

const REGISTER_SP: [u64; 2] = [word(b"REGISTER"), b' ' as u64];
const INVITE_SP: u64 = word(b"INVITE ");
const OPTIONS_SP: u64 = word(b"OPTIONS ");
/// `sip/2.0` with bit 5 set on its letters, as `SIP/2.0` is matched.
const VERSION_WORD: u64 = word(b"sip/2.0");
const FOLD_VERSION: u64 = word(b"\x20\x20\x20\0\0\0\0");

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
    /// Set by the runs at a watched header's start when its line, up to
    /// the line feed, lacks the field's key letter ([`PatternTable::keys`]):
    /// no match can end on it, so the runs leave the automaton where it is,
    /// and once the sub-reader is done the line is skipped. Where the
    /// automaton stands at the line's end does not matter: a fold reads as
    /// a space, which no pattern holds, and that leads any state back to
    /// the field's root. Cleared at the line's end.
    quiet: u8,
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
            quiet: 0,
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
        // One store each: merged, they became a call to memset.
        set(&mut out.to_rules, 0);
        set(&mut out.from_rules, 0);
        set(&mut out.auth_rules, 0);
        self.phase = P_METHOD;
        self.header = H_OTHER;
        self.name_len = 0;
        self.fold = 0;
        set(&mut self.quiet, 0);
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

    /// Reads a run of bytes at once where the byte loop would only pass
    /// over them, step the fingerprint automaton or match a known header
    /// name, from `buf[pos..len]` (`pos < len <= SCAN_BYTES`; the
    /// [`SCAN_PAD`] bytes of `buf` from `len` must be zero: words are
    /// loaded past the input without a test). Returns
    /// how many bytes it read, 0 when the byte at `pos` needs
    /// [`SipScan::step`]. Whatever it reads leaves the reader exactly as
    /// the byte loop would (the tests check that on arbitrary input).
    ///
    /// The XDP program calls it twice per `bpf_loop` iteration: the bench's
    /// 726-byte REGISTER takes 31 steps (16 iterations) instead of 726.
    #[inline(always)]
    pub fn advance(
        &mut self,
        buf: &[u8; SCAN_BYTES + SCAN_PAD],
        pos: usize,
        len: usize,
        table: &PatternTable,
    ) -> usize {
        let at = pos & (SCAN_BYTES - 1);
        let avail = len.wrapping_sub(pos);
        if self.phase == P_SKIP || self.phase == P_LINE_START {
            return self.lines_run(buf, at, avail, table);
        }
        let w0 = word_at(buf, at, 0);
        let w1 = word_at(buf, at, 1);
        let count = if avail < 8 { avail } else { 8 };
        match self.phase {
            P_VALUE => self.value_run(w0, w1, count, table),
            P_URI => self.request_user_run(w0, w1, avail, table),
            P_METHOD => self.method_run(w0, w1),
            P_VERSION => self.version_run(w0, w1),
            _ => 0,
        }
    }

    /// Between headers: the rest of a header nobody reads (in `P_SKIP`),
    /// the next line's known name, or the blank line that ends the
    /// headers, and the rest of that header if nobody reads it either.
    /// Every part starts before `len` (`at + read` < `len` <= `SCAN_BYTES`:
    /// the words never wrap).
    #[inline(always)]
    fn lines_run(
        &mut self,
        buf: &[u8; SCAN_BYTES + SCAN_PAD],
        at: usize,
        avail: usize,
        table: &PatternTable,
    ) -> usize {
        let mut read = 0;
        if self.phase == P_SKIP {
            read = self.skip_run(buf, at, table);
            if self.phase != P_LINE_START || read >= avail {
                return read;
            }
        }
        let w0 = word_at(buf, at + read, 0);
        if w0 & 0xffff == 0x0a0d || w0 & 0xff == 0x0a {
            // The blank line: the headers were read whole.
            self.out.status = ScanStatus::Complete;
            self.phase = P_DONE;
            return read + if w0 & 0xff == 0x0a { 1 } else { 2 };
        }
        let name = self.name_run(w0, word_at(buf, at + read, 1), table);
        if name == 0 {
            return read;
        }
        read += name;
        if read < avail {
            if self.phase == P_SKIP {
                // A header nobody reads: on to its line feed.
                read += self.skip_run(buf, at + read, table);
            } else {
                self.check_quiet(buf, at + read, table);
            }
        }
        read
    }

    /// At a watched header's value: sets [`SipScan::quiet`] if the line
    /// feed comes, within [`SKIP_WORDS`] words, before any byte that is
    /// the field's key letter in either case. The automaton is still in its
    /// start state, so a match ending on this line would lie within it.
    #[inline(always)]
    fn check_quiet(&mut self, buf: &[u8; SCAN_BYTES + SCAN_PAD], at: usize, table: &PatternTable) {
        // H_FROM, H_TO, H_CONTACT and H_AGENT are their fields' numbers
        // (H_AGENT 4 as 0); credentials have no automaton (`dfa` 0).
        let key = table.keys[(self.header & 3) as usize];
        if key == 0 || self.dfa == 0 {
            return;
        }
        let mut k = 0;
        while k < SKIP_WORDS {
            let word = word_at(buf, at, k);
            // Folded, a letter matches in either case, and no other byte
            // does (bytes past the input are zero: neither).
            let stops = byte_mask(word, b'\n') | byte_mask(word | FOLD_ALL, key);
            if stops != 0 {
                if (word >> (first_flagged(stops) * 8)) as u8 == b'\n' {
                    self.quiet = 1;
                }
                return;
            }
            k += 1;
        }
    }

    /// Inside a header nobody reads: up to the line feed, a word at a time
    /// (SWAR search), at most [`SKIP_WORDS`] words. Bytes past the input
    /// are zero, never a line feed: a run may end past the input, where
    /// the caller stops.
    #[inline(always)]
    fn skip_run(
        &mut self,
        buf: &[u8; SCAN_BYTES + SCAN_PAD],
        at: usize,
        table: &PatternTable,
    ) -> usize {
        let mut k = 0;
        while k < SKIP_WORDS {
            let feeds = byte_mask(word_at(buf, at, k), b'\n');
            if feeds != 0 {
                self.end_line(table);
                return k * 8 + first_flagged(feeds) + 1;
            }
            k += 1;
        }
        SKIP_WORDS * 8
    }

    /// Inside a value: bytes that only step the fingerprint automaton, or
    /// the sub-reader without changing its state (a quoted display name,
    /// the plain bytes of a URI user, a User-Agent copied while it fits),
    /// up to the line end. Stops before a byte that needs the byte loop: a
    /// pattern ending or the automaton dying at it, a byte the sub-reader
    /// acts on.
    #[inline(always)]
    fn value_run(&mut self, word: u64, w1: u64, count: usize, table: &PatternTable) -> usize {
        if word & 0xffff == 0x0a0d {
            // CR LF (bytes past the input are zero): the CR is dropped, the
            // LF ends the line.
            self.end_line(table);
            return 2;
        }
        if self.fold != 0 || (self.value_len == 0 && is_space(word as u8)) {
            return 0;
        }
        // Up to the line end (the lowest flag is exact).
        let ends = byte_mask(word, b'\n') | byte_mask(word, b'\r');
        let count = if ends == 0 {
            count
        } else {
            let at = first_flagged(ends);
            if at < count {
                at
            } else {
                count
            }
        };
        let header = self.header;
        let mut mode = match header {
            H_FROM | H_TO => match self.uri {
                U_DONE => RUN_PLAIN,
                U_QUOTED => RUN_QUOTED,
                U_USER if self.esc == 0 => RUN_USER,
                U_SEEK => RUN_SEEK,
                _ => return 0,
            },
            H_CONTACT => RUN_PLAIN,
            H_AGENT if self.out.user_agent.flags & (FIELD_DUPLICATE | FIELD_TRUNCATED) != 0 => {
                RUN_PLAIN
            }
            H_AGENT => RUN_COPY,
            // No fingerprints in credentials (`dfa` is 0): the sub-reader only.
            H_AUTH => return self.auth_run(word, w1, count, table),
            _ => return 0,
        };
        let quiet = self.quiet != 0;
        let mut dfa = self.dfa;
        if (dfa == 0 || quiet) && mode == RUN_PLAIN {
            // The byte loop passes over what is left (see `value_char`).
            return 0;
        }
        // Where the sub-reader would act: the run stops before it (or, for
        // a URI's start and a user's `@`, takes it whole).
        let mut at_sign = false;
        // A quote the run takes as its last byte: it closes (or, in a seek,
        // opens and closes) the display name.
        let mut closes = false;
        let count = match mode {
            RUN_QUOTED => {
                let stop = until_either(word, count, b'"', b'\\');
                closes = stop < count && (word >> (stop * 8)) as u8 == b'"';
                stop + closes as usize
            }
            RUN_SEEK if count > 0 && word as u8 == b'"' => {
                // A quoted display name: its opening quote, its text, and
                // its closing quote if this word holds it.
                let stop = 1 + until_either(word >> 8, count - 1, b'"', b'\\');
                closes = stop < count && (word >> (stop * 8)) as u8 == b'"';
                mode = RUN_SEEK_QUOTED;
                stop + closes as usize
            }
            RUN_USER => {
                let plain = plain_user_bytes(word, count);
                at_sign = plain < count
                    && (word >> (plain * 8)) as u8 == b'@'
                    && self.scheme != SCHEME_TEL;
                plain + at_sign as usize
            }
            RUN_SEEK => {
                let start = self.uri_start(word);
                if start == 0 || start > count {
                    return 0;
                }
                start
            }
            RUN_COPY => {
                let room = AGENT_BYTES.saturating_sub(self.out.user_agent.len as usize);
                if room < count {
                    room
                } else {
                    count
                }
            }
            _ => count,
        };
        // The fingerprint automaton, up to a byte where a pattern ends or it
        // dies. A loop of its own: few live values, no spills.
        let dfa_before = dfa;
        let mut read = count;
        if dfa != 0 && !quiet {
            let mut i = 0;
            while i < 8 {
                if i >= count {
                    break;
                }
                let table = opaque(table);
                let byte = (word >> (i * 8)) as u8;
                let next = table.step(dfa, table.class[byte as usize]);
                if next & NEXT_STOPS != 0 {
                    // Dead, or a pattern ends at this byte.
                    read = i;
                    break;
                }
                dfa = next;
                i += 1;
            }
            self.dfa = dfa;
        }
        match mode {
            RUN_QUOTED if closes && read == count => self.uri = U_SEEK,
            RUN_SEEK_QUOTED => {
                if read == 0 {
                    return 0;
                }
                if !(closes && read == count) {
                    self.uri = U_QUOTED;
                } else if self.dfa == 0 || quiet {
                    // The display name is closed and no automaton reads on:
                    // a URI's start right after it is read in this step too
                    // (it is input: neither zeros past the input nor a line
                    // end match it).
                    let next = if read >= 8 {
                        w1
                    } else {
                        (word >> (read * 8)) | (w1 << (64 - read * 8))
                    };
                    let start = self.uri_start(next);
                    if start != 0 {
                        self.open_uri(next, header);
                        let read = read + start;
                        self.value_len = self.value_len.saturating_add(read as u16);
                        return read;
                    }
                }
            }
            RUN_USER if at_sign => {
                if read == count {
                    self.user_bytes(word, read - 1, header, table);
                    self.user_found(header, table);
                    self.uri = U_DONE;
                    if quiet {
                        // Nothing left to read on this line.
                        self.phase = P_SKIP;
                    }
                } else {
                    self.user_bytes(word, read, header, table);
                }
            }
            RUN_USER => self.user_bytes(word, read, header, table),
            RUN_SEEK => {
                if read < count {
                    // A pattern ends inside the URI's start: byte by byte.
                    self.dfa = dfa_before;
                    return 0;
                }
                self.open_uri(word, header);
            }
            RUN_COPY => {
                let agent = &mut self.out.user_agent;
                let len = opaque_index(agent.len as usize);
                if len <= AGENT_BYTES - 8 {
                    // The whole word in one store (bytes past `read` are
                    // past the length: not part of the value).
                    // SAFETY: len + 8 <= AGENT_BYTES.
                    unsafe { store_word(agent.bytes.as_mut_ptr().add(len), word) };
                    agent.len = (len + read) as u8;
                } else {
                    let mut i = 0;
                    while i < 8 {
                        if i >= read {
                            break;
                        }
                        agent.push_masked((word >> (i * 8)) as u8);
                        i += 1;
                    }
                }
            }
            _ => {}
        }
        self.value_len = self.value_len.saturating_add(read as u16);
        if read == count && read > 0 && self.phase == P_VALUE {
            // The line ends right after the run: read its end too (the byte
            // loop drops the CR and ends the line at the LF).
            let next = if read >= 8 {
                w1
            } else {
                (word >> (read * 8)) | (w1 << (64 - read * 8))
            } & 0xffff;
            if next == 0x0a0d {
                self.end_line(table);
                return read + 2;
            }
            if next & 0xff == 0x0a {
                self.end_line(table);
                return read + 1;
            }
        }
        read
    }

    /// The first `count` bytes of `word`, plain bytes of a user (of the
    /// Request-URI, From, To, or the credentials' `H_AUTH`): copied and
    /// stepped through the user automaton.
    #[inline(always)]
    fn user_bytes(&mut self, word: u64, count: usize, header: u8, table: &PatternTable) {
        let mut user_dfa = self.user_dfa;
        let field = match header {
            H_FROM => &mut self.out.from_user,
            H_TO => &mut self.out.to_user,
            H_AUTH => &mut self.out.auth_user,
            _ => &mut self.out.request_user,
        };
        let mut i = 0;
        while i < 8 {
            if i >= count {
                break;
            }
            let byte = (word >> (i * 8)) as u8;
            // The dead state 0 stays dead: no need to step it (a chain of
            // dependent loads), and with no extension rules every user dies
            // at its first byte.
            if user_dfa != 0 {
                user_dfa = table.users.step(user_dfa, byte);
            }
            field.push_masked(byte);
            i += 1;
        }
        self.user_dfa = user_dfa;
    }

    /// In the Request-URI's user part: its plain bytes, copied; at its
    /// start, `sip:` and the user's first bytes.
    #[inline(always)]
    fn request_user_run(&mut self, w0: u64, w1: u64, avail: usize, table: &PatternTable) -> usize {
        let (mut word, mut count, mut base) = (w0, if avail < 8 { avail } else { 8 }, 0);
        if self.uri == U_SEEK && count >= 4 && self.uri_start(word) == 4 {
            // `sip:` (a blank would end the Request-URI: not ` <sip:`),
            // then on from the byte after it.
            self.open_uri(word, H_OTHER);
            self.value_len = self.value_len.saturating_add(4);
            word = (w0 >> 32) | (w1 << 32);
            count = if avail - 4 < 8 { avail - 4 } else { 8 };
            base = 4;
        }
        let plain = match self.uri {
            U_USER if self.esc == 0 => {
                let read = plain_user_bytes(word, count);
                self.user_bytes(word, read, H_OTHER, table);
                read
            }
            // After the user: nothing to read up to the blank before the
            // version (a CR, LF or tab there is the byte loop's to refuse).
            U_DONE => {
                let stops = byte_mask(word, b' ')
                    | byte_mask(word, b'\t')
                    | byte_mask(word, b'\r')
                    | byte_mask(word, b'\n');
                if stops != 0 && first_flagged(stops) < count {
                    first_flagged(stops)
                } else {
                    count
                }
            }
            _ => return base,
        };
        let mut read = plain;
        if plain < count {
            let stop = (word >> (plain * 8)) as u8;
            if stop == b'@' && self.uri == U_USER && self.scheme != SCHEME_TEL {
                self.user_found(H_OTHER, table);
                self.uri = U_DONE;
                read += 1;
            } else if stop == b' ' && self.value_len as usize + plain > 0 {
                // The blank that ends the Request-URI (not a byte of it).
                self.value_len = self.value_len.saturating_add(plain as u16);
                self.end_uri_user(H_OTHER, table);
                self.phase = P_VERSION;
                self.name_len = 0;
                return base + plain + 1;
            }
        }
        self.value_len = self.value_len.saturating_add(read as u16);
        base + read
    }

    /// The length of a SIP URI's start (` <sip:`, `<sip:`, or `sip:` where
    /// no scheme letters came before) at the start of `word`, 0 if none.
    #[inline(always)]
    fn uri_start(&self, word: u64) -> usize {
        if (word | FOLD_SP_LT_SIP) & low_bytes(6) == SP_LT_SIP {
            6
        } else if (word | FOLD_LT_SIP) & low_bytes(5) == LT_SIP {
            5
        } else if self.scheme_len == 0 && (word | FOLD_SIP) & low_bytes(4) == SIP_COLON {
            4
        } else {
            0
        }
    }

    /// After a URI's start ([`SipScan::uri_start`]): as the byte loop
    /// leaves it at its colon.
    #[inline(always)]
    fn open_uri(&mut self, word: u64, header: u8) {
        if word as u8 != b's' && word as u8 != b'S' {
            // ` <` or `<`: in brackets.
            self.uri_bracketed = 1;
        }
        self.scheme = SCHEME_SIP;
        self.scheme_len = 3;
        self.enter_user(header);
    }

    /// A known scheme's colon: the URI's user starts.
    #[inline(always)]
    fn enter_user(&mut self, header: u8) {
        self.uri = U_USER;
        self.user_dfa = USER_START;
        self.esc = 0;
        self.user_field(header).clear();
    }

    /// In credentials: the scheme's letters (nothing to do until its
    /// blank), the `username` parameter's name, and its quoted value.
    #[inline(always)]
    fn auth_run(&mut self, word: u64, w1: u64, count: usize, table: &PatternTable) -> usize {
        let read = match self.auth {
            A_SCHEME => {
                // The scheme and the blank after it.
                let stop = until_either(word, count, b' ', b'\t');
                if stop < count {
                    self.auth = A_PARAM_START;
                    stop + 1
                } else {
                    stop
                }
            }
            A_PARAM_START if count == 8 && word | FOLD_ALL == USERNAME_WORD => {
                if w1 & 0xffff == u64::from(u16::from_le_bytes(*b"=\"")) {
                    // `username="`: the quoted value starts (bytes that are
                    // not zero are input).
                    self.out.auth_user.clear();
                    self.user_dfa = USER_START;
                    self.auth = A_QUOTED;
                    10
                } else {
                    self.auth_index = USERNAME.len() as u8;
                    self.auth = A_PARAM_NAME;
                    8
                }
            }
            A_QUOTED => {
                let stop = until_either(word, count, b'"', b'\\');
                self.user_bytes(word, stop, H_AUTH, table);
                if stop < count && (word >> (stop * 8)) as u8 == b'"' {
                    // The closing quote: the username is read, and nothing
                    // else in credentials is (no fingerprints there).
                    self.auth_found(table);
                    self.phase = P_SKIP;
                    stop + 1
                } else {
                    stop
                }
            }
            _ => 0,
        };
        self.value_len = self.value_len.saturating_add(read as u16);
        read
    }

    /// At the start of a header line: a known name and its colon, matched
    /// case-insensitively word by word, read at once.
    #[inline(always)]
    fn name_run(&mut self, w0: u64, w1: u64, table: &PatternTable) -> usize {
        let Some(name) = known_name(w0, w1) else {
            return 0;
        };
        // The header `start_value` would find from the name words (which
        // nothing reads after it: they are not stored).
        self.start_header(name.header, table);
        // A blank after the colon is passed over whether the value is read
        // or skipped.
        let at = name.len as u32 + 1;
        let after = if at < 8 {
            (w0 >> (8 * at)) as u8
        } else {
            (w1 >> (8 * (at & 7))) as u8
        };
        if after == b' ' {
            name.len as usize + 2
        } else {
            name.len as usize + 1
        }
    }

    /// At the start of the request: a common method and its space.
    #[inline(always)]
    fn method_run(&mut self, w0: u64, w1: u64) -> usize {
        if self.name_len != 0 {
            return 0;
        }
        let (name, method, len) = if w0 == REGISTER_SP[0] && w1 & 0xff == REGISTER_SP[1] {
            (REGISTER_SP[0], SipMethod::Register, 8)
        } else if w0 & low_bytes(7) == INVITE_SP {
            (INVITE_SP & low_bytes(6), SipMethod::Invite, 6)
        } else if w0 == OPTIONS_SP {
            (OPTIONS_SP & low_bytes(7), SipMethod::Options, 7)
        } else {
            return 0;
        };
        // The byte loop leaves the method in the name words (the second
        // stays 0: these methods are shorter than 9 bytes).
        set(&mut self.name[0], name);
        self.out.method = method;
        self.phase = P_URI;
        self.name_len = 0;
        len + 1
    }

    /// After the Request-URI: `SIP/2.0` (any case) and the line end.
    #[inline(always)]
    fn version_run(&mut self, w0: u64, w1: u64) -> usize {
        if self.name_len != 0 || (w0 | FOLD_VERSION) & low_bytes(7) != VERSION_WORD {
            return 0;
        }
        let eighth = (w0 >> 56) as u8;
        if eighth == b'\n' {
            self.name_len = VERSION.len() as u8;
            self.phase = P_LINE_START;
            8
        } else if eighth == b'\r' && w1 & 0xff == u64::from(b'\n') {
            self.name_len = VERSION.len() as u8;
            self.phase = P_LINE_START;
            9
        } else {
            0
        }
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

    /// The name's colon: which header it is, and how its value is read.
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
        self.start_header(header, table);
    }

    /// [`SipScan::start_value`] once the header is known.
    #[inline(always)]
    fn start_header(&mut self, header: u8, table: &PatternTable) {
        self.header = header;
        set(&mut self.value_len, 0);
        set(&mut self.fold, 0);
        set(&mut self.quiet, 0);
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
            self.dfa = table.step(self.dfa, class) & NEXT_STATE;
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
        if !busy && (self.dfa == 0 || self.quiet != 0) {
            // Nothing more to learn from this header (or from this line,
            // quiet): skip it word by word.
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
        self.quiet = 0;
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
                        self.enter_user(header);
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

/// Words [`SipScan::advance`] searches for a line end in one call.
const SKIP_WORDS: usize = 8;
/// Bytes after the copy that [`SipScan::advance`]'s words may load (the
/// per-CPU copy has them too; they are never read as input).
pub const SCAN_PAD: usize = SKIP_WORDS * 8;

/// Reads `payload` (its first [`SCAN_BYTES`]) as the XDP program does:
/// [`SipScan::advance`] where it can, else one [`SipScan::step`], then
/// [`SipScan::finish`].
pub fn scan(payload: &[u8], table: &PatternTable) -> SipSummary {
    let mut scanner = SipScan::new();
    scanner.reset();
    let len = payload.len().min(SCAN_BYTES);
    let mut buf = [0u8; SCAN_BYTES + SCAN_PAD];
    buf[..len].copy_from_slice(&payload[..len]);
    let mut pos = 0;
    while pos < len && scanner.wants_more() {
        let read = scanner.advance(&buf, pos, len, table);
        if read == 0 {
            let byte = buf[pos];
            if !scanner.skips(byte) {
                scanner.step(byte, table);
            }
            pos += 1;
        } else {
            pos += read;
        }
    }
    scanner.finish();
    scanner.out
}

#[cfg(test)]
#[path = "sip_scan_tests.rs"]
pub(crate) mod tests;
