"""Sample data and local PACS launchers for the demo, the tests and the benchmarks."""
