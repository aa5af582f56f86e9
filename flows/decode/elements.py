"""The IPFIX information elements the decoders read (IANA "IPFIX Information Elements"
registry; NetFlow v9 field types 1-127 are the same numbers, RFC 7012 section 4), by name.

This table is the one list: templates.py compiles exactly these into record layouts, and
records.py, netflow.py and the vendor mappings name them from here.
"""

from __future__ import annotations

from enum import IntEnum


class IE(IntEnum):
    octetDeltaCount = 1
    packetDeltaCount = 2
    protocolIdentifier = 4
    ipClassOfService = 5
    tcpControlBits = 6
    sourceTransportPort = 7
    sourceIPv4Address = 8
    sourceIPv4PrefixLength = 9
    ingressInterface = 10
    destinationTransportPort = 11
    destinationIPv4Address = 12
    destinationIPv4PrefixLength = 13
    egressInterface = 14
    ipNextHopIPv4Address = 15
    bgpSourceAsNumber = 16
    bgpDestinationAsNumber = 17
    bgpNextHopIPv4Address = 18
    flowEndSysUpTime = 21
    flowStartSysUpTime = 22
    postOctetDeltaCount = 23
    postPacketDeltaCount = 24
    sourceIPv6Address = 27
    destinationIPv6Address = 28
    sourceIPv6PrefixLength = 29
    destinationIPv6PrefixLength = 30
    flowLabelIPv6 = 31
    icmpTypeCodeIPv4 = 32
    samplingInterval = 34
    samplingAlgorithm = 35
    samplerId = 48
    samplerMode = 49
    samplerRandomInterval = 50
    minimumTTL = 52
    maximumTTL = 53
    fragmentIdentification = 54
    sourceMacAddress = 56
    postDestinationMacAddress = 57
    vlanId = 58
    postVlanId = 59
    ipVersion = 60
    flowDirection = 61
    ipNextHopIPv6Address = 62
    bgpNextHopIPv6Address = 63
    mplsTopLabelStackSection = 70
    mplsLabelStackSection2 = 71
    mplsLabelStackSection3 = 72
    mplsLabelStackSection4 = 73
    mplsLabelStackSection5 = 74
    mplsLabelStackSection6 = 75
    mplsLabelStackSection7 = 76
    mplsLabelStackSection8 = 77
    mplsLabelStackSection9 = 78
    mplsLabelStackSection10 = 79
    destinationMacAddress = 80
    postSourceMacAddress = 81
    octetTotalCount = 85
    packetTotalCount = 86
    fragmentOffset = 88
    forwardingStatus = 89
    layer2packetSectionData = 104
    icmpTypeCodeIPv6 = 139
    flowStartSeconds = 150
    flowEndSeconds = 151
    flowStartMilliseconds = 152
    flowEndMilliseconds = 153
    flowStartMicroseconds = 154
    flowEndMicroseconds = 155
    flowStartNanoseconds = 156
    flowEndNanoseconds = 157
    flowStartDeltaMicroseconds = 158
    flowEndDeltaMicroseconds = 159
    systemInitTimeMilliseconds = 160
    icmpTypeIPv4 = 176
    icmpCodeIPv4 = 177
    icmpTypeIPv6 = 178
    icmpCodeIPv6 = 179
    ipTTL = 192
    postNATSourceIPv4Address = 225
    postNATDestinationIPv4Address = 226
    postNAPTSourceTransportPort = 227
    postNAPTDestinationTransportPort = 228
    initiatorOctets = 231
    responderOctets = 232
    firewallEvent = 233
    ingressVRFID = 234
    egressVRFID = 235
    dot1qVlanId = 243
    ingressPhysicalInterface = 252
    egressPhysicalInterface = 253
    postDot1qVlanId = 254
    ethernetType = 256
    postNATSourceIPv6Address = 281
    postNATDestinationIPv6Address = 282
    initiatorPackets = 298
    responderPackets = 299
    selectorId = 302
    selectorAlgorithm = 304
    samplingPacketInterval = 305
    samplingPacketSpace = 306
    samplingSize = 309
    samplingPopulation = 310
    samplingProbability = 311
    dataLinkFrameSize = 312
    ipHeaderPacketSection = 313
    dataLinkFrameSection = 315
    # Not IANA: Cisco ASA NSEL's NF_F_FW_EVENT, a NetFlow v9 field type (same codes as 233).
    ciscoFirewallEvent = 40005


MPLS_LABELS = tuple(IE(n) for n in range(IE.mplsTopLabelStackSection, IE.mplsLabelStackSection10 + 1))
# Packet sections: the packet from its link layer (315, 104) or from its IP header (313).
SECTIONS = frozenset({IE.layer2packetSectionData, IE.ipHeaderPacketSection, IE.dataLinkFrameSection})
# RFC 5103 biflows: the elements whose reverse (PEN 29305) copy the decoder reads.
REVERSED = frozenset({
    IE.octetDeltaCount, IE.packetDeltaCount, IE.tcpControlBits, IE.flowEndSysUpTime, IE.flowStartSysUpTime,
    IE.postOctetDeltaCount, IE.postPacketDeltaCount, IE.octetTotalCount, IE.packetTotalCount,
    IE.flowStartSeconds, IE.flowEndSeconds, IE.flowStartMilliseconds, IE.flowEndMilliseconds,
})
# Read as raw bytes whatever their length: addresses, MACs, label stack entries, sections.
BYTEWISE = frozenset({
    IE.sourceIPv4Address, IE.destinationIPv4Address, IE.ipNextHopIPv4Address, IE.bgpNextHopIPv4Address,
    IE.sourceIPv6Address, IE.destinationIPv6Address, IE.ipNextHopIPv6Address, IE.bgpNextHopIPv6Address,
    IE.sourceMacAddress, IE.postDestinationMacAddress, IE.destinationMacAddress, IE.postSourceMacAddress,
    IE.postNATSourceIPv4Address, IE.postNATDestinationIPv4Address, IE.postNATSourceIPv6Address,
    IE.postNATDestinationIPv6Address, *MPLS_LABELS, *SECTIONS,
})
