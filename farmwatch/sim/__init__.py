"""Protocol-faithful simulators of the HLT farm's monitor endpoints (see ``specs/hlt-zmq-monitoring.md``).

``SimUnit`` is one HLT unit (distributor, collector, final collector, histogram servers) with a
traffic model and fault injection; ``SimFarm`` serves many units from one thread;
``python -m farmwatch.sim`` runs a farm in its own process.
"""

from farmwatch.sim.farm import SimFarm
from farmwatch.sim.unit import SimUnit

__all__ = ["SimFarm", "SimUnit"]
