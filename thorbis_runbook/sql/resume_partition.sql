-- Whether a partition is still attached to its parent, and whether a concurrent detach of it is
-- pending (interrupted between its two transactions).
SELECT i.inhdetachpending
  FROM pg_inherits AS i
 WHERE i.inhrelid = %(partition)s AND i.inhparent = %(parent)s
