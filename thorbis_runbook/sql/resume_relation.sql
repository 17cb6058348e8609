-- A relation named as a migration's parser read it: schema NULL means "found through
-- search_path", as the statement itself would find it. Each part is quoted on its own, so a
-- mixed-case or quoted name resolves exactly, never case-folded.
SELECT c.oid, c.relnamespace, c.relkind::text
  FROM pg_class AS c
 WHERE c.oid = to_regclass(concat_ws('.', quote_ident(%(schema)s), quote_ident(%(name)s)))
