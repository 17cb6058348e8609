"""Recovery: the ways back from a migration, and what they need saved before it.

``rollback`` dispatches to one module per strategy (``down_scripts`` for schema_only,
``restore`` for full_restore, ``pitr`` for point_in_time); ``backup`` and ``snapshot`` keep what
they restore from; ``result`` holds the result types they share; ``target_run`` chooses the run
to undo. Rehearsal lives outside this package: it calls apply.
"""
