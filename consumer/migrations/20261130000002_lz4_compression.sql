-- Payloads and projected states are usually over Postgres' 2 KB TOAST
-- threshold, so every one is compressed on write. lz4 costs a fraction of the
-- default pglz's CPU: on the drain benchmark (README, Benchmarks) the same
-- Postgres stored about 15,800 instead of 11,000 events/s. Only where the server has
-- it (PostgreSQL 14+ built with lz4, as the Debian, Ubuntu, RHEL and official
-- container builds are); otherwise pglz stays, and nothing else changes.
-- Rows already stored keep their compression.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        EXECUTE 'ALTER TABLE hookline.events
                     ALTER COLUMN payload SET COMPRESSION lz4,
                     ALTER COLUMN payload_raw SET COMPRESSION lz4,
                     ALTER COLUMN headers SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE hookline.objects ALTER COLUMN state SET COMPRESSION lz4';
        EXECUTE 'ALTER TABLE hookline.dead_letters ALTER COLUMN payload SET COMPRESSION lz4';
    END IF;
EXCEPTION
    WHEN feature_not_supported THEN
        RAISE NOTICE 'lz4 compression is not available in this server; keeping pglz';
    -- A consumer that does not own the tables (a DBA created them) must still
    -- start: compression is a saving, not a requirement.
    WHEN insufficient_privilege THEN
        RAISE WARNING 'not the owner of the hookline tables: keeping pglz (the owner can run ALTER TABLE ... SET COMPRESSION lz4)';
END
$$;
