//! Every map the XDP program uses. Sizes here are defaults; the controller
//! resizes the capacity-bearing maps from its configuration before loading.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use guard_common::{
    clock::ClockBase,
    sip_rules::{SipPermit, DIAL_KEY_BYTES, PERMIT_KEY_BYTES},
    sip_scan::{PatternTable, ScanStatus},
    BanEntry, Counter, Health, PeerEntry, PortClass, RateKey, RateRule, RateState, RulesPerCpu,
    ServicePolicy, Settings, SourceCacheEntry, SourceKey, MAX_RATE_RULES, POLICY_SLOTS, PORT_SLOTS,
    SERVICE_SLOTS, SOURCE_CACHE_SLOTS, VERDICT_SLOTS,
};

/// Active bans. A plain hash, not an LRU: a flood of new sources must never
/// evict a ban; when it is full, new offenders are dropped but not banned.
#[map]
pub static BANS: HashMap<SourceKey, BanEntry> = HashMap::with_max_entries(65_536, 0);

/// Deny lists (value unused). Data in network byte order.
#[map]
pub static DENY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(65_536, 0);
#[map]
pub static DENY_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(65_536, 0);

/// The fleet deny set: networks CrowdSec decisions and blocklist feeds
/// drop, apart from the operator's deny lists so that they never push
/// those out. The value is the entry's prefix length (`FleetEntry`).
#[map]
pub static FLEET_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(65_536, 0);
#[map]
pub static FLEET_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(65_536, 0);
/// Non-zero while FLEET_V4 (index 0) or FLEET_V6 (index 1) may hold an
/// entry. Most guards run without a fleet: an array read, which the
/// verifier inlines, then spares every packet the trie search (~6 ns).
#[map]
pub static FLEET_IN_USE: Array<u32> = Array::with_max_entries(2, 0);

/// Allow lists; the value is the mask of services the network may use.
#[map]
pub static ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(65_536, 0);
#[map]
pub static ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(65_536, 0);
/// The allow lists' generation (never 0 once the controller wrote it):
/// bumped whenever an allow list or the policy slot changes, so that an
/// allow answer cached (`SOURCE_CACHE`) under an older one is searched again.
#[map]
pub static ALLOW_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
/// Recent IPv4 sources' allow answers, and whether they were in a drop
/// set, per CPU (see `source_cache`).
#[map]
pub static SOURCE_CACHE: PerCpuArray<SourceCacheEntry> =
    PerCpuArray::with_max_entries(SOURCE_CACHE_SLOTS, 0);
/// The drop sets' generation: bumped after every entry made in the ban,
/// deny or fleet sets (see `guard_common::DROP_GENERATION_CONTROLLER_STEP`).
#[map]
pub static DROP_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// The base that turns `jiffies` into the clock of bans and rate windows
/// (see `clock`); written by the controller at load.
#[map]
pub static CLOCK: Array<ClockBase> = Array::with_max_entries(1, 0);

/// Service and rate rules of every (protocol, destination port), for each
/// of the two policy slots (`guard_common::POLICY_SLOTS`).
#[map]
pub static PORTS: Array<PortClass> = Array::with_max_entries(POLICY_SLOTS * PORT_SLOTS, 0);

#[map]
pub static SERVICES: Array<ServicePolicy> =
    Array::with_max_entries(POLICY_SLOTS * SERVICE_SLOTS, 0);

#[map]
pub static RULES: Array<RateRule> =
    Array::with_max_entries(POLICY_SLOTS * MAX_RATE_RULES as u32, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Sliding windows per (source, rule group): one entry holds the windows
/// of up to four rules. LRU, so a spoofed-source flood recycles the
/// coldest entries instead of exhausting memory.
#[map]
pub static RATE_STATE: LruHashMap<RateKey, RateState> = LruHashMap::with_max_entries(1_000_000, 0);

/// One zeroed `RateState`, never written: the value a new rate-state
/// entry is inserted from (too large for the BPF stack).
#[map]
pub static RATE_ZERO: Array<RateState> = Array::with_max_entries(1, 0);

/// Learned peers, written by the controller: their rate budget is a
/// multiple of each rule's limit. A plain hash: a flood cannot evict a peer.
#[map]
pub static PEERS: HashMap<SourceKey, PeerEntry> = HashMap::with_max_entries(65_536, 0);

/// Packets and bytes per (verdict reason, destination service).
#[map]
pub static VERDICTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

#[map]
pub static RULES_PER_CPU: PerCpuArray<RulesPerCpu> = PerCpuArray::with_max_entries(POLICY_SLOTS, 0);

#[map]
pub static HEALTH: PerCpuArray<u64> = PerCpuArray::with_max_entries(Health::COUNT as u32, 0);

/// One `BanEvent` per ban made in the kernel.
#[map]
pub static BAN_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Slot 0: the `sipguard_capture` program, tail-called for SIP packets
/// that pass; slot 1: `sipguard_capture_denied`, for requests a SIP rule denied.
#[map]
pub static CAPTURE_PROG: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The packet the packet path hands to `sipguard_capture` or
/// `sipguard_capture_denied` (written right before the tail call, which
/// keeps the CPU), so that they need not parse it again.
#[map]
pub static CAPTURE_ASK: PerCpuArray<crate::sip_capture::CaptureAsk> =
    PerCpuArray::with_max_entries(1, 0);

/// SIP signalling for the controller's authentication-failure watcher:
/// about 2,000 `SipCapture` records in flight.
#[map]
pub static SIP_EVENTS: RingBuf = RingBuf::with_byte_size(SIP_EVENTS_BYTES as u32, 0);
pub const SIP_EVENTS_BYTES: u64 = 4 * 1024 * 1024;

/// Scanner fingerprints, one table per policy slot (switched with the policy).
#[map]
pub static SIP_PATTERNS: Array<PatternTable> = Array::with_max_entries(POLICY_SLOTS, 0);

/// Which extension and dial rules permit a network, keyed by policy slot
/// and address (IPv4-mapped): one lookup answers for every rule (see
/// `guard_common::sip_rules`).
#[map]
pub static SIP_PERMIT: LpmTrie<[u8; PERMIT_KEY_BYTES], SipPermit> =
    LpmTrie::with_max_entries(16_384, 0);

/// Dial prefixes, keyed by policy slot and the prefix's bytes; the value
/// is the dial rule's index.
#[map]
pub static SIP_DIAL: LpmTrie<[u8; DIAL_KEY_BYTES], u32> = LpmTrie::with_max_entries(16_384, 0);

/// SIP requests read, per CPU, by outcome (`ScanStatus`).
#[map]
pub static SIP_SCANS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ScanStatus::COUNT, 0);

/// Per-CPU copy of the payload being read, and the reader's state.
#[map]
pub static SIP_SCRATCH: PerCpuArray<crate::sip_inspect::Scratch> =
    PerCpuArray::with_max_entries(1, 0);
