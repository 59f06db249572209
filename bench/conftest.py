"""pytest setup of the bench suite: machine facts (suite.machine_facts) in the benchmark JSON's
`machine_info`, where `python -m bench` reads them for its report."""

from bench.suite import machine_facts


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["udon"] = machine_facts()
