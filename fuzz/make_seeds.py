#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/ from the
repository's real messages and files. Run from fuzz/: python3 make_seeds.py
Seeds are named by what they are; the fuzzer's own finds (hex names) are
not committed (see FUZZING.md)."""
import json, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- SIP: flags byte (bit 0: complete capture) then the payload ---------
def sip(name, payload, flags=1):
    write("sip_parse", name, bytes([flags]) + payload)


corpus = open(os.path.join(ROOT, "guard-userspace/benches/sip_corpus.txt"), "rb").read()
messages = [m.strip(b"\n") for m in corpus.split(b"%%")]
stream = b""
for i, m in enumerate(messages):
    if not m:
        continue
    m = m.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n\r\n"
    sip(f"bench_{i}.sip", m)
    stream += m
sip("bench_stream.sip", stream)
sip("bench_stream_cut.sip", stream[: len(stream) * 2 // 3], flags=0)


def register_with(extra):
    return ("REGISTER sip:pbx SIP/2.0\r\n" + extra +
            "Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\n"
            "To: <sip:1001@pbx>\r\nFrom: <sip:1001@pbx>;tag=1\r\nCall-ID: cid-1\r\nCSeq: 2 REGISTER\r\n"
            "Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"n1\", response=\"0\"\r\n"
            "Content-Length: 0\r\n\r\n").encode("latin-1")


plain = register_with("")
text = plain.decode()
evasions = {
    "plain": plain,
    "ff_user_agent": register_with("User-Agent: x\xffy\r\n"),
    "nul_header": register_with("X-Pad: a\0b\r\n"),
    "raw_bytes": plain[:26] + b"X-Bin: \xff\xfe\x00\x80\r\n" + plain[26:],
    "200_headers": register_with("".join(f"X-{i}: y\r\n" for i in range(200))),
    "no_colon": register_with("junk line\r\n"),
    "bad_name": register_with("Bad Name: x\r\n"),
    "bad_cseq_first": register_with("CSeq: x REGISTER\r\n"),
    "bad_content_length": register_with("Content-Length: lots\r\n"),
    "lf_only": text.replace("\r\n", "\n").encode(),
    "mixed_line_ends": text.replace("\r\n", "\n", 3).encode(),
    "any_case": text.replace("Call-ID", "cAlL-iD").replace("CSeq", "cseq")
        .replace("Authorization", "AUTHORIZATION").encode(),
    "compact_call_id": text.replace("Call-ID:", "i:").encode(),
    "tabs_spaces": text.replace("Call-ID: ", "Call-ID \t:\t  ")
        .replace("CSeq: 2 REGISTER", "CSeq:\t2 \t  REGISTER\t").replace("Digest ", "Digest\t  ").encode(),
    "folded_call_id": text.replace("Call-ID: cid-1", "Call-ID:\r\n cid-1").encode(),
    "folded_inside": text.replace("Call-ID: cid-1", "Call-ID: cid\r\n\t-1").encode(),
    "folded_credentials": text.replace("realm=\"pbx\", ", "realm=\"pbx\",\r\n   ").encode(),
    "param_order": text.replace("username=\"1001\", realm=\"pbx\", nonce=\"n1\", response=\"0\"",
                                "response=0 ,nonce = n1,realm=pbx,USERNAME=\"1001\"").encode(),
    "comma_in_quotes": text.replace("response=\"0\"", "opaque=\"a,nonce=x\", response=\"0\"").encode(),
    "lowercase_version": text.replace("SIP/2.0\r\n", "sip/2.0\r\n").encode(),
    "start_line_spaces": text.replace("REGISTER sip:pbx SIP/2.0", "REGISTER   sip:pbx\tSIP/2.0").encode(),
    "cseq_leading_zeros": text.replace("CSeq: 2 ", "CSeq: 0002 ").encode(),
    "padding_1500": register_with("X-Pad: " + "p" * 1500 + "\r\n"),
    "duplicates": register_with("Call-ID: other\r\nCSeq: 7 REGISTER\r\n"
                                "Authorization: Digest username=\"1001\", realm=\"other.test\", nonce=\"bogus\", response=\"00\"\r\n"),
    "escaped_user": text.replace("sip:1001@pbx>;tag", "sip:%31%30%301@pbx>;tag").encode(),
    "compact_forms": ("INVITE sip:100@pbx SIP/2.0\nv:SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bK1\n"
                      "V : SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\nf:   <sip:scanner@203.0.113.9>;tag=1\n"
                      "t:<sip:100@pbx>\ni: 84ea1f5@203.0.113.9\ncseq:   77    INVITE  \n"
                      "m: <sip:scanner@203.0.113.9:5070>\nuser-agent: friendly-scanner\nl: 4\n\nv=0\n").encode(),
    "proxy_stale": ("SIP/2.0 407 Proxy Authentication Required\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\n"
                    "Call-ID: cid-1\r\nCSeq: 2 REGISTER\r\nProxy-Authenticate: Digest realm=\"pbx\", nonce=\"n2\", stale=TRUE\r\n"
                    "Content-Length: 0\r\n\r\n").encode(),
    "ok_expires": ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\nCall-ID: cid-1\r\n"
                   "CSeq: 2 REGISTER\r\nContact: <sip:1001@198.51.100.7>;expires=60, <sip:1001@10.0.0.2>;expires=30\r\n"
                   "Expires: 3600\r\nContent-Length: 0\r\n\r\n").encode(),
    "forbidden": ("SIP/2.0 403 Forbidden\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\nCall-ID: cid-1\r\n"
                  "CSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n").encode(),
    "keepalive": b"\r\n\r\n",
}
for name, payload in evasions.items():
    sip(f"evasion_{name}.sip", payload)
# A TCP segment: two messages, keep-alives, and one cut inside Digest.
sip("tcp_two_messages.sip", b"\r\n\r\n" + plain + plain + b"\r\n\r\n")
cut = plain.index(b"Digest") + 3
sip("tcp_cut.sip", plain + plain[:cut], flags=0)

# sipp scenarios (tests/peers/*.xml): their messages, fields filled in.
fill = {"remote_ip": "192.0.2.1", "local_ip": "198.51.100.7", "local_port": "5070",
        "transport": "UDP", "branch": "z9hG4bK-1-0", "service": "1001", "pid": "42",
        "call_number": "1", "call_id": "1-42@198.51.100.7", "len": "0",
        "authentication": "Authorization: Digest username=\"1001\",realm=\"pbx\",nonce=\"abc\","
                          "uri=\"sip:192.0.2.1\",response=\"00112233445566778899aabbccddeeff\",algorithm=MD5"}
peers = os.path.join(ROOT, "tests/peers")
for xml in sorted(os.listdir(peers)):
    if not xml.endswith(".xml"):
        continue
    src = open(os.path.join(peers, xml)).read()
    for i, block in enumerate(re.findall(r"<!\[CDATA\[(.*?)\]\]>", src, re.S)):
        lines = [l.strip() for l in block.strip("\n").splitlines()]
        while lines and not lines[0]:
            lines.pop(0)
        msg = "\r\n".join(lines).strip() + "\r\n\r\n"
        msg = re.sub(r"\[([a-z_]+)[^\]]*\]", lambda m: fill.get(m.group(1), m.group(0)), msg)
        sip(f"sipp_{xml[:-4]}_{i}.sip", msg.encode())

# --- config: sipguard.example.toml and small configs --------------------
write("config", "example.toml", open(os.path.join(ROOT, "sipguard.example.toml"), "rb").read())
configs = {
    "empty.toml": "",
    "drop_all.toml": "[guard]\ndefault = \"drop\"\n\n[services.sip]\naccess = \"open\"\n",
    "lists.toml": "[[allow]]\ncidr = \"198.51.100.0/24\"\nservices = [\"sip\", \"web\"]\ncomment = \"office\"\n\n"
                  "[[deny]]\ncidr = \"2001:db8::/32\"\n",
    "inline_rules.toml": "rate_rules = [{ name = \"x\", ports = \"udp/5060\", packets = 10, seconds = 1, ban = \"1h\" }]\n",
    "non_utf8.toml": b"[guard]\ndefault = \"pass\"\n# caf\xe9\n",
    "huge_capacity.toml": "[guard]\nmax_bans = 4294967295\n",
}
for name, data in configs.items():
    write("config", name, data)

# --- control requests: one JSON line each -------------------------------
requests = [
    {"cmd": "status"},
    {"cmd": "ban_add", "ip": "192.0.2.7", "seconds": 60, "reason": "fraud", "force": True},
    {"cmd": "ban_add", "ip": "2001:db8::1", "seconds": None, "reason": None},
    {"cmd": "ban_remove", "ip": "192.0.2.7"},
    {"cmd": "bans"},
    {"cmd": "allow_add", "cidr": "198.51.100.0/24", "services": ["sip", "web"], "comment": "office",
     "session": {"client": "203.0.113.5", "server_port": 22}},
    {"cmd": "allow_remove", "cidr": "198.51.100.0/24"},
    {"cmd": "allow_list"},
    {"cmd": "deny_add", "cidr": "10.98.0.77/24", "comment": None},
    {"cmd": "deny_remove", "cidr": "2001:db8::/32"},
    {"cmd": "deny_list"},
    {"cmd": "explain", "ip": "::ffff:192.0.2.9"},
    {"cmd": "monitor", "on": True},
    {"cmd": "reload"},
    {"cmd": "apply", "path": "/etc/sipguard/sipguard.toml", "confirm_seconds": 60},
    {"cmd": "confirm"},
]
for r in requests:
    write("control_request", f"{r['cmd']}_{requests.index(r)}.json", json.dumps(r))

# --- state files: flags byte (bit 0: lists.json; bits 1..: IPv6 prefix) --
bans = {"version": 1, "bans": [
    {"key": "::ffff:192.0.2.7", "reason": "rate_rule", "rule": "sip-flood", "detail": "121 packets",
     "created_unix": 1799999000, "expires_unix": 1800003600, "dropped": 12},
    {"key": "2001:db8:1:2::ff", "reason": "sip_auth", "rule": None, "detail": "10 failures",
     "created_unix": 1799990000, "expires_unix": None, "dropped": 0},
    {"key": "::ffff:198.51.100.1", "reason": "manual", "rule": "gone", "detail": "",
     "created_unix": 1, "expires_unix": 2, "dropped": 18446744073709551615},
]}
write("state_files", "bans.json", bytes([64 << 1]) + json.dumps(bans).encode())
write("state_files", "bans_v2.json", bytes([0]) + json.dumps({"version": 2, "bans": []}).encode())
entry = {"cidr": "198.51.100.7/24", "services": ["sip"], "comment": "office", "origin": "runtime"}
lists = {"version": 1,
         "allow_added": {"198.51.100.7/24": entry},
         "deny_added": {"2001:db8::1/32": {"cidr": "2001:db8::1/32", "services": [], "comment": "", "origin": "runtime"}},
         "allow_removed": ["10.0.0.0/8"], "deny_removed": ["192.0.2.0/24", "2001:db8::/32"]}
write("state_files", "lists.json", bytes([1]) + json.dumps(lists).encode())

# --- feeds: flags byte (bit 0: APIBan page; bit 1: include_private;
# bits 2..: max_entries - 1 for a list, the HTTP status's index for a page)
voipbl = "# VoIPBL blacklist\n198.51.100.7\n203.0.113.0/24\n2001:db8:5::/48\n10.0.0.1\nnot an ip\n"
write("feeds", "voipbl.txt", bytes([63 << 2]) + voipbl.encode())
firehol = "#\n# firehol_level1\n#\n0.0.0.0/8\n10.0.0.0/8\n224.0.0.0/3\n185.0.0.0/16\n192.0.2.77/24\n"
write("feeds", "firehol.netset", bytes([(3 << 2) | 2]) + firehol.encode())
write("feeds", "drop.txt", bytes([8 << 2]) + b"; Spamhaus DROP\r\n1.10.16.0/20 ; SBL256894\r\n::ffff:192.0.2.9\r\n")
write("feeds", "html.txt", bytes([0]) + b"<!DOCTYPE html><html><body>502</body></html>")
write("feeds", "page.json", bytes([1]) + b'{"ipaddress":["198.51.100.7","203.0.113.9"],"ID":"1764460001"}')
write("feeds", "none.json", bytes([1 | (1 << 2)]) + b'{"ipaddress":["no new bans"],"ID":"none"}')
write("feeds", "unauthorized.json", bytes([1 | (1 << 2)]) + b'{"ipaddress":["unauthorized"],"ID":"unauthorized"}')
write("feeds", "limit.json", bytes([1 | (5 << 2)]) + b'{"ipaddress":"rate limit exceeded","ID":"100"}')
