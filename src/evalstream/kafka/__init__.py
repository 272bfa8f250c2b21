"""The Kafka edge: the one place that builds Kafka clients, creates topics and checks that writes
were acknowledged."""
