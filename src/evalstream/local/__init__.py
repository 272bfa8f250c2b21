"""The embedded stack on one machine: the child-process launcher, the broker, Prometheus,
Alertmanager, the replay LLM server's process, and ``evalstream up``."""
