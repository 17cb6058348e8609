-- {version}_{name} (verify): raise when the change is not in place.
-- Runs inside the migration's transaction right before it commits, and after rehearsals.

DO $verify$
BEGIN
    -- IF to_regclass('business_core.example') IS NULL THEN
    --     RAISE EXCEPTION 'business_core.example is missing';
    -- END IF;
    NULL;
END
$verify$;
