-- Workers, their deployments, heartbeats and the event history.
--
-- A worker is the current state of one name. Each registration is a deployment with its own
-- serial number; re-registering a name closes the previous deployment, which stays for history.
-- All times are taken from the database clock at receipt: liveness never trusts a client clock.

CREATE TABLE deployments (
    serial_number text PRIMARY KEY
                  CONSTRAINT deployments_serial_format
                  CHECK (serial_number ~ '^DMN-[A-Z]{2}-[0-9]{2}-[0-9A-F]{8}-[0-9A-F]{5}$'),
    worker_name   text NOT NULL,
    worker_type   text NOT NULL,
    family        text NOT NULL REFERENCES model_families (code),
    generation    smallint NOT NULL CHECK (generation BETWEEN 1 AND 99),
    model_number  text NOT NULL,
    api_url       text NOT NULL,
    user_id       text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'
                  CONSTRAINT deployments_metadata_object CHECK (jsonb_typeof(metadata) = 'object'),
    deployed_at   timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    end_reason    text,
    CONSTRAINT deployments_model_matches_family
        CHECK (model_number = 'DMN-' || family || '-' || lpad(generation::text, 2, '0')),
    CONSTRAINT deployments_serial_embeds_model
        CHECK (left(serial_number, 9) = model_number),
    CONSTRAINT deployments_end_after_start
        CHECK (ended_at IS NULL OR ended_at >= deployed_at),
    CONSTRAINT deployments_end_reason_when_ended
        CHECK ((ended_at IS NULL) = (end_reason IS NULL)),
    CONSTRAINT deployments_name_serial_unique UNIQUE (worker_name, serial_number)
);

-- At most one open deployment per worker name.
CREATE UNIQUE INDEX deployments_one_open_per_name
    ON deployments (worker_name) WHERE ended_at IS NULL;
CREATE INDEX deployments_by_name_time ON deployments (worker_name, deployed_at DESC);
CREATE INDEX deployments_by_time ON deployments (deployed_at);

COMMENT ON TABLE deployments IS 'One row per registration (one serial number). ended_at is set when the name re-registers or deregisters.';

CREATE TABLE workers (
    worker_name       text PRIMARY KEY
                      CONSTRAINT workers_name_rule
                      CHECK (char_length(worker_name) BETWEEN 1 AND 128
                             AND worker_name !~ '[[:cntrl:]]'),
    serial_number     text NOT NULL UNIQUE,
    worker_type       text NOT NULL,
    family            text NOT NULL REFERENCES model_families (code),
    generation        smallint NOT NULL,
    model_number      text NOT NULL,
    api_url           text NOT NULL
                      CONSTRAINT workers_api_url_rule
                      CHECK (char_length(api_url) <= 2048 AND api_url ~* '^https?://'),
    user_id           text NOT NULL
                      CONSTRAINT workers_user_id_rule
                      CHECK (char_length(user_id) BETWEEN 1 AND 128 AND user_id !~ '[[:cntrl:]]'),
    metadata          jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'registered'
                      CONSTRAINT workers_status_known
                      CHECK (status IN ('registered', 'active', 'stale', 'offline', 'deregistered')),
    deployed_at       timestamptz NOT NULL,
    status_changed_at timestamptz NOT NULL,
    last_heartbeat_at timestamptz,
    heartbeat_count   bigint NOT NULL DEFAULT 0 CHECK (heartbeat_count >= 0),
    -- The current deployment must be this worker's own.
    CONSTRAINT workers_current_deployment
        FOREIGN KEY (worker_name, serial_number) REFERENCES deployments (worker_name, serial_number),
    CONSTRAINT workers_model_matches_family
        CHECK (model_number = 'DMN-' || family || '-' || lpad(generation::text, 2, '0')),
    -- A registered worker has never beaten; an active one has.
    CONSTRAINT workers_heartbeat_consistent
        CHECK ((status <> 'registered' OR (last_heartbeat_at IS NULL AND heartbeat_count = 0))
           AND (status <> 'active' OR last_heartbeat_at IS NOT NULL)
           AND ((last_heartbeat_at IS NULL) = (heartbeat_count = 0))),
    CONSTRAINT workers_times_ordered
        CHECK (status_changed_at >= deployed_at
               AND (last_heartbeat_at IS NULL OR last_heartbeat_at >= deployed_at))
);

CREATE INDEX workers_by_status ON workers (status);
CREATE INDEX workers_by_family_status ON workers (family, status);
CREATE INDEX workers_by_user ON workers (user_id);
CREATE INDEX workers_by_deployed_at ON workers (deployed_at);
-- The sweeper's scan: live workers by the time they were last heard of.
CREATE INDEX workers_liveness
    ON workers ((coalesce(last_heartbeat_at, deployed_at)))
    WHERE status IN ('registered', 'active', 'stale');

COMMENT ON TABLE workers IS 'Current state per worker name; its serial_number is the current deployment.';
COMMENT ON COLUMN workers.status IS 'registered -> active (first heartbeat) -> stale -> offline; deregistered after DELETE.';

CREATE TABLE worker_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_name   text,
    serial_number text REFERENCES deployments (serial_number),
    kind          text NOT NULL
                  CONSTRAINT worker_events_kind_known
                  CHECK (kind IN ('registered', 're_registered', 'first_heartbeat', 'stale',
                                  'offline', 'recovered', 'deregistered',
                                  'brake_held', 'brake_released')),
    from_status   text CHECK (from_status IN ('registered', 'active', 'stale', 'offline', 'deregistered')),
    to_status     text CHECK (to_status IN ('registered', 'active', 'stale', 'offline', 'deregistered')),
    reason        text NOT NULL DEFAULT '',
    at            timestamptz NOT NULL DEFAULT now(),
    -- Brake events concern the fleet; every other event concerns one worker's deployment.
    CONSTRAINT worker_events_subject
        CHECK (CASE WHEN kind IN ('brake_held', 'brake_released')
                    THEN worker_name IS NULL AND serial_number IS NULL
                    ELSE worker_name IS NOT NULL AND serial_number IS NOT NULL
                         AND to_status IS NOT NULL END)
);

CREATE INDEX worker_events_by_worker ON worker_events (worker_name, id DESC);
CREATE INDEX worker_events_by_time ON worker_events (at);

COMMENT ON TABLE worker_events IS 'Every status transition of every worker (and of the sweeper brake), with database time.';

-- One row per heartbeat, partitioned by UTC day so that retention drops whole days.
CREATE TABLE heartbeats (
    worker_name   text NOT NULL,
    serial_number text NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (received_at);

-- Catches rows for a day whose partition was not created in time; never expected to fill.
CREATE TABLE heartbeats_default PARTITION OF heartbeats DEFAULT;

CREATE INDEX heartbeats_by_worker ON heartbeats (worker_name, received_at DESC);

COMMENT ON TABLE heartbeats IS 'Every heartbeat received (database time), kept for the retention window; one partition per UTC day.';

-- Creates the daily partitions from yesterday to days_ahead days ahead; returns how many it made.
CREATE FUNCTION ensure_heartbeat_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day date;
    made integer := 0;
    part text;
BEGIN
    FOR day IN
        SELECT d::date FROM generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                            (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                            interval '1 day') AS d
    LOOP
        part := 'heartbeats_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF heartbeats FOR VALUES FROM (%L) TO (%L)',
                part, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END;
$$;

-- Drops the daily partitions that lie wholly before the retention window; returns how many.
CREATE FUNCTION drop_heartbeat_partitions(retention_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
    cutoff date := (now() AT TIME ZONE 'UTC')::date - retention_days;
BEGIN
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'heartbeats'::regclass AND c.relname ~ '^heartbeats_p[0-9]{8}$'
    LOOP
        IF to_date(substr(part.relname, 13), 'YYYYMMDD') < cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

SELECT ensure_heartbeat_partitions(3);
