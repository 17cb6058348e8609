-- Whether the expand step's sync trigger is on the table (the contract step needs it there).
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_trigger
     WHERE tgrelid = %(table)s::regclass AND tgname = %(trigger)s AND NOT tgisinternal
)
