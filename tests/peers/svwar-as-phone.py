#!/usr/bin/python3
"""Debian's svwar (sipvicious 0.3.3) with a phone's User-Agent instead of
its own "friendly-scanner", which no option changes: an extension scan
that User-Agent fingerprints cannot see. Arguments as svwar's."""
import sys

sys.path.insert(0, "/usr/share/sipvicious")
import sipvicious.svwar as svwar  # noqa: E402

AGENT = "Yealink SIP-T46S 66.86.0.15"
make_request = svwar.makeRequest


def as_phone(*args, **kwargs):
    kwargs["useragent"] = AGENT
    return make_request(*args, **kwargs)


svwar.makeRequest = as_phone
sys.argv[0] = "svwar"
sys.exit(svwar.main())
