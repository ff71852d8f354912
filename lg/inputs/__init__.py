"""Loading, above the domain loaders: a run's inputs bound once (run_inputs), `lg validate`'s file kinds
(validate) and the JSON Schemas of every file a user writes (schemas). lg.config below holds formats only."""
