"""The models behind a page: the backend interface (in-process SavedModels or TF Serving over
gRPC), the pushed versions, the retrieval index store and the circuit breaker."""
