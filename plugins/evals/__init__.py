"""First-party eval suites: json-action, json-schema, breadth, perplexity, risk-probes, benchmark and lm-eval.

They register through `register_eval_suites`, exactly as a third-party suite
would. Nothing here imports torch at module import.
"""

from factory.hookspecs import hookimpl

from .benchmark import BenchmarkSuite
from .breadth import BreadthSuite
from .json_action import JsonActionSuite
from .json_schema import JsonSchemaSuite
from .lm_eval_suite import LmEvalSuite
from .perplexity import PerplexitySuite
from .risk_probes import RiskProbesSuite

__version__ = "1.0"

SUITES = (JsonActionSuite, BreadthSuite, PerplexitySuite, RiskProbesSuite, BenchmarkSuite, JsonSchemaSuite, LmEvalSuite)


@hookimpl
def register_eval_suites(register):
    for cls in SUITES:
        register(cls())
