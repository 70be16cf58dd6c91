-- When TimescaleDB is installed and preloaded (the demo stack's database), the time-series
-- tables become hypertables with compression and retention policies. On plain PostgreSQL
-- this migration does nothing: the tables stay ordinary tables with BRIN time indexes.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
       AND current_setting('shared_preload_libraries', true) LIKE '%timescaledb%' THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('requests', 'time', chunk_time_interval => INTERVAL '1 hour',
                                  migrate_data => true, if_not_exists => true);
        PERFORM create_hypertable('backend_snapshots', 'time', chunk_time_interval => INTERVAL '1 day',
                                  migrate_data => true, if_not_exists => true);
        EXECUTE 'ALTER TABLE requests SET (timescaledb.compress, '
                'timescaledb.compress_segmentby = ''pool, backend'', timescaledb.compress_orderby = ''time DESC'')';
        EXECUTE 'ALTER TABLE backend_snapshots SET (timescaledb.compress, '
                'timescaledb.compress_segmentby = ''pool, backend'', timescaledb.compress_orderby = ''time DESC'')';
        PERFORM add_compression_policy('requests', INTERVAL '1 day', if_not_exists => true);
        PERFORM add_compression_policy('backend_snapshots', INTERVAL '7 days', if_not_exists => true);
        PERFORM add_retention_policy('requests', INTERVAL '30 days', if_not_exists => true);
        PERFORM add_retention_policy('backend_snapshots', INTERVAL '90 days', if_not_exists => true);
    END IF;
END
$$;
