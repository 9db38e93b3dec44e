"""The ``sections`` command, run as a real subprocess."""
import json
import subprocess
import sys
import urllib.request


def test_simulate_serves_on_loopback_with_the_given_faults():
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "simulate", "--port", "0", "--shuffle", "--rpm", "100"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.split()[-1].removesuffix("/v1")
        config = json.load(urllib.request.urlopen(base + "/admin/config", timeout=5))
        assert config["shuffle"] is True and config["rpm"] == 100
        assert json.load(urllib.request.urlopen(base + "/stats", timeout=5))["requests"] == 0
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_simulate_help_lists_the_simulator_flags():
    out = subprocess.run([sys.executable, "-m", "core.cli", "simulate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tpm-burst" in out.stdout and "sections simulate" in out.stdout
