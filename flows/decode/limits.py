"""The decoder's limits per datagram and per exporter: what one hostile exporter can cost.

Each limit sits far above what routers send (the figures beside them) and bounds the worst
case of one datagram to about 2 ms of decode and 2,000 rows (bench/hostile.py measures it).
Hitting a limit is counted (`waxflow_decode_errors_total{reason="limit"}`) and the rest of that
datagram, set or sample is not read.
"""

MAX_SETS_PER_DATAGRAM = 128  # v9/IPFIX sets (routers: 1-30; softflowd: one per flow)
MAX_TEMPLATE_RECORDS_PER_DATAGRAM = 256  # template records read from one datagram (routers: 1-40)
MAX_NEW_TEMPLATES_PER_DATAGRAM = 24  # templates built from one datagram; unchanged ones are free
MAX_ROWS_PER_DATAGRAM = 2_000  # flows from one datagram (a 9,000-byte jumbo of 20-byte records: 450)
MAX_TEMPLATE_FIELDS = 256  # fields of one template (routers: 10-80)
MAX_TEMPLATE_FIELDS_PER_DATAGRAM = 4_096  # template fields parsed from one datagram, refreshes included
MAX_VARIABLE_FIELDS = 16  # variable-length fields of one template (walked in Python per record)
MAX_VARIABLE_RECORDS_PER_DATAGRAM = 500  # records read one by one in Python: of templates with
# variable-length fields (routers: a sampled packet each, 1-10 per datagram, ~55 in a 9,000-byte
# jumbo) and options records (routers: 1-20 per datagram)
MIN_RECORD_LENGTH = 4  # bytes of a data template's record (routers: 20 and more)
MAX_SAMPLES_PER_DATAGRAM = 256  # sFlow samples (agents: 1-10; a 9,000-byte jumbo: ~45)
MAX_RECORDS_PER_SAMPLE = 32  # flow records in one sFlow sample (agents: 2-6)

# Per outlet process, over all its exporters' decoder states: past either bound the least
# recently active exporter's state is dropped (counted; it relearns its templates from the next
# refresh), so that a flood of sources cannot exhaust memory.
MAX_EXPORTERS_PER_PROCESS = 50_000
MAX_STATE_BYTES_PER_PROCESS = 512 * 1024 * 1024
