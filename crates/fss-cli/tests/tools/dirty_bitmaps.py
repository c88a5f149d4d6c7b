#!/usr/bin/python3
"""Read QEMU-style dirty bitmaps through python libnbd over TLS, as backup tools do.

Usage: dirty_bitmaps.py PORT CERTDIR PAIRS_JSON, where PAIRS_JSON is a list of
[export, since]; prints a JSON object {"export:since": [[offset, length], ...]}: the extents
flagged dirty (flag 1) in qemu:dirty-bitmap:SINCE on EXPORT, merged, in ascending order.
"""
import json
import sys

import nbd

port, certs, pairs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
for export, since in pairs:
    ctx = "qemu:dirty-bitmap:" + since
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(certs)
    h.set_export_name(export)
    h.add_meta_context(ctx)
    h.connect_tcp("127.0.0.1", port)
    assert h.get_tls_negotiated(), "TLS was not negotiated"
    assert h.can_meta_context(ctx), ctx + " not offered on " + export
    size = h.get_size()
    dirty = []
    pos = 0

    def extents(metacontext, offset, entries, err):
        global pos
        if metacontext != ctx:
            return 0
        at = offset
        for i in range(0, len(entries), 2):
            length, flags = entries[i], entries[i + 1]
            if flags & 1:
                if dirty and dirty[-1][0] + dirty[-1][1] == at:
                    dirty[-1][1] += length
                else:
                    dirty.append([at, length])
            at += length
        pos = at
        return 0

    while pos < size:
        before = pos
        h.block_status(min(size - pos, 1 << 30), pos, extents)
        assert pos > before, "block status made no progress"
    h.shutdown()
    out[export + ":" + since] = dirty
print(json.dumps(out))
