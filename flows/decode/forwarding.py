"""Forwarding status (RFC 7270 `forwardingStatus`, the ForwardingStatus column) from what
exporters other than IPFIX's IE 89 say about a packet's fate — every mapping in one place.

RFC 7270 codes: the top two bits are the status (1 forwarded, 2 dropped, 3 consumed), the low
six the reason. 64 forwarded, unknown; 128 dropped, unknown; 129 ACL deny; 130 ACL drop;
131 unroutable; 133 fragmentation needed and DF set; 137 bad TTL; 138 policer; 139 WRED
(congestion); 141 for us.
"""

from __future__ import annotations

import numpy as np

FORWARDED, DROPPED = 64, 128

# sFlow v5 (sflow_version_5.txt, "interface" format 1: packet discarded): the 30-bit value is
# the reason, ICMP unreachable codes 0-15 and sFlow's own 256-262.
SFLOW_DISCARD_REASONS: dict[int, int] = {
    0: 131,    # net unreachable → unroutable
    1: 131,    # host unreachable
    2: 141,    # protocol unreachable: addressed to the device, nothing there → for us
    3: 141,    # port unreachable
    4: 133,    # fragmentation needed and DF set
    5: 131,    # source route failed
    6: 131,    # destination network unknown
    7: 131,    # destination host unknown
    8: 129,    # source host isolated (administrative) → ACL deny
    9: 129,    # destination network administratively prohibited
    10: 129,   # destination host administratively prohibited
    11: 131,   # network unreachable for the type of service
    12: 131,   # host unreachable for the type of service
    13: 129,   # communication administratively prohibited
    14: 128,   # host precedence violation
    15: 128,   # precedence cutoff in effect
    256: 128,  # unknown
    257: 137,  # TTL exceeded → bad TTL
    258: 129,  # ACL
    259: 139,  # no buffer space: a queue drop, as WRED's
    260: 139,  # RED
    261: 138,  # traffic shaping / rate limiting → policer
    262: 133,  # packet too big (protocols that do not fragment)
}
_SFLOW_TABLE = np.full(263, DROPPED, np.int64)
for _reason, _status in SFLOW_DISCARD_REASONS.items():
    _SFLOW_TABLE[_reason] = _status


def sflow_discard_status(reason: np.ndarray) -> np.ndarray:
    """The forwarding status of sFlow discard reasons (unknown reasons: dropped, unknown)."""
    reason = np.asarray(reason, np.int64)
    return np.where(reason < len(_SFLOW_TABLE), _SFLOW_TABLE[np.minimum(reason, len(_SFLOW_TABLE) - 1)], DROPPED)


# Juniper (PEN 2636) commonPropertiesId, IE 137, as Junos inline monitoring exports it
# (resiliency exception reporting): each occurrence is a 6-bit type and its value; type 2,
# in a 2-byte field, is the forwarding exception code. Its numbering is the platform's, not
# RFC 7270's, so like the reference only its meaning is kept: 0 forwarded, else dropped.
JUNIPER_PEN = 2636
JUNIPER_CPID = 137
JUNIPER_CPID_EXCEPTION = 2


def juniper_exception_status(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows that carry a forwarding exception, their status) for 2-byte CPID values."""
    value = np.asarray(value, np.int64)
    exception = (value >> 10) == JUNIPER_CPID_EXCEPTION
    return exception, np.where((value & 0x3FF) == 0, FORWARDED, DROPPED)
