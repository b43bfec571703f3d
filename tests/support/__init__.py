"""Helpers the test tiers and the benchmarks share: servers, worker fleets, oracles, fault proxies, fuzzers."""
