"""Benchmarks, the fault scenarios the tests and the soak share, and the labelled-incident
traffic that scores the anomaly detectors. Each script prints its figures."""
