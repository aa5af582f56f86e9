"""Flow decoders: NetFlow v5, NetFlow v9, IPFIX and sFlow v5 datagrams → flow RecordBatches.

Public API:
- `FlowDecoder().decode_many([(payload, exporter, received), ...]) -> pyarrow.RecordBatch`
  and `FlowDecoder().decode(payload, exporter, received)`: state for many exporters.
- `ExporterState(exporter)` and `decode_many(state, datagrams)`: one exporter's picklable,
  bounded state, for a dataflow that keys by exporter and keeps the state itself.
- `metrics`: the Prometheus counters (`waxflow_decode_*`).
"""

from flows.decode import metrics
from flows.decode.decoder import FlowDecoder, decode_many
from flows.decode.state import ExporterState

__all__ = ["FlowDecoder", "ExporterState", "decode_many", "metrics"]
