-- Liveness: the sweeper's shared state and the reports DBAs read.

-- One row: what the sweeping replica knows across restarts and replicas.
CREATE TABLE liveness_state (
    id                     boolean PRIMARY KEY DEFAULT true CONSTRAINT liveness_state_one_row CHECK (id),
    -- The last sweep by any replica (database time); a long gap means the registry was away.
    last_sweep_at          timestamptz,
    -- The replica that swept last.
    sweeper_instance       text,
    -- No worker is marked stale before this time (set after an outage).
    grace_until            timestamptz,
    -- Set while the brake holds stale transitions back.
    brake_engaged_at       timestamptz,
    brake_held             integer NOT NULL DEFAULT 0 CHECK (brake_held >= 0),
    brake_live             integer NOT NULL DEFAULT 0 CHECK (brake_live >= 0),
    -- An operator's release: the next sweep applies what the brake held.
    brake_release_requested_at timestamptz,
    CONSTRAINT liveness_state_brake_counts
        CHECK (brake_engaged_at IS NOT NULL OR (brake_held = 0 AND brake_live = 0))
);
INSERT INTO liveness_state DEFAULT VALUES;

COMMENT ON TABLE liveness_state IS 'The sweeper''s state, shared by all replicas: last sweep, outage grace, brake.';

-- Partition maintenance may run on several replicas at once; serialize it.
CREATE OR REPLACE FUNCTION ensure_heartbeat_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    made integer := 0;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('dals.heartbeat_partitions'));
    FOR day IN
        SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                            (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                            interval '1 day') AS d
    LOOP
        part := 'heartbeats_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF heartbeats FOR VALUES FROM (%L) TO (%L)',
                    part, (day::timestamp AT TIME ZONE 'UTC'),
                    ((day + 1)::timestamp AT TIME ZONE 'UTC'));
                made := made + 1;
            EXCEPTION WHEN check_violation THEN
                -- Rows of that day already sit in the default partition; leave them there.
                RAISE WARNING 'heartbeat partition % not created: the default partition holds its rows', part;
            END;
        END IF;
    END LOOP;
    RETURN made;
END;
$$;

-- Fleet by family and status: how many workers of each family are in each state now.
CREATE VIEW fleet_by_family_status AS
SELECT f.code AS family, f.name AS family_name, w.status, count(*) AS workers
FROM workers w
JOIN model_families f ON f.code = w.family
GROUP BY f.code, f.name, w.status;

COMMENT ON VIEW fleet_by_family_status IS 'Workers per family and status, now.';

-- Deployments per UTC day and model number.
CREATE VIEW deployments_per_day AS
SELECT (deployed_at AT TIME ZONE 'UTC')::date AS day, model_number, count(*) AS deployments,
       count(DISTINCT worker_name) AS workers
FROM deployments
GROUP BY 1, 2;

COMMENT ON VIEW deployments_per_day IS 'Registrations (deployments) per UTC day and model number.';

-- Uptime per worker per UTC day, from the events: each event starts a span in its to_status
-- that lasts until the worker's next event (or now). Active seconds over observed seconds,
-- where observed is any status but deregistered.
CREATE VIEW worker_uptime_daily AS
WITH spans AS (
    SELECT worker_name, to_status AS status, at AS span_start,
           coalesce(lead(at) OVER (PARTITION BY worker_name ORDER BY at, id), now()) AS span_end
    FROM worker_events
    WHERE worker_name IS NOT NULL
), pieces AS (
    SELECT s.worker_name, s.status, d AS day_start,
           greatest(s.span_start, d) AS piece_start,
           least(s.span_end, d + interval '1 day') AS piece_end
    FROM spans s
    CROSS JOIN LATERAL generate_series(date_trunc('day', s.span_start, 'UTC'), s.span_end,
                                       interval '1 day') AS d
    WHERE s.span_end > s.span_start
)
SELECT worker_name,
       (day_start AT TIME ZONE 'UTC')::date AS day,
       extract(epoch FROM sum(piece_end - piece_start) FILTER (WHERE status = 'active'))::numeric(12, 3)
           AS active_seconds,
       extract(epoch FROM sum(piece_end - piece_start) FILTER (WHERE status <> 'deregistered'))::numeric(12, 3)
           AS observed_seconds,
       round((extract(epoch FROM sum(piece_end - piece_start) FILTER (WHERE status = 'active'))
              / nullif(extract(epoch FROM sum(piece_end - piece_start)
                                       FILTER (WHERE status <> 'deregistered')), 0))::numeric, 4)
           AS uptime_ratio
FROM pieces
WHERE piece_end > piece_start
GROUP BY worker_name, day_start;

COMMENT ON VIEW worker_uptime_daily IS 'Per worker and UTC day: seconds active, seconds observed (not deregistered) and their ratio, computed from worker_events.';
