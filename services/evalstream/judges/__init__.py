"""Judge tiers behind one gRPC contract (``evalstream.v1.JudgeService``)."""
