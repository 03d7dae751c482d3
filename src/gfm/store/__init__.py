"""The trajectory store: its arrays, codec and schema version (arrays), the writer of generated and imported
stores (writer), a recorded run's one-run store and appending it (one_run), the writer's lock and durable file
operations (durable), the reader (reader), the structural check every reader runs (check), ``gfm check``'s
scan of every chunk (scan) and the held-out evaluation data a store may hold (eval_data).

May import: gfm.base, gfm.core, gfm.artifacts, gfm.config. Torch-free: ``gfm split`` and ``gfm check`` read
stores without it.
"""
