-- Operator commands for workers (only `restart` for now), delivered in heartbeat responses.
--
-- A command targets one deployment (serial number), not a name: a restart asked of a process
-- must not hit the process that replaced it. Delivery is at least once: an open command
-- (pending or delivered) rides on every heartbeat response of its deployment until the worker
-- acknowledges it, so a lost response does not lose it. When the deployment ends (the name
-- registers again or deregisters) its open commands are cancelled, by the trigger below.

CREATE TABLE worker_commands (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    worker_name     text NOT NULL,
    serial_number   text NOT NULL,
    command         text NOT NULL
                    CONSTRAINT worker_commands_command_known CHECK (command IN ('restart')),
    -- pending: not yet sent; delivered: sent in a heartbeat response, not yet acknowledged.
    status          text NOT NULL DEFAULT 'pending'
                    CONSTRAINT worker_commands_status_known
                    CHECK (status IN ('pending', 'delivered', 'acknowledged', 'cancelled')),
    -- operator: POST /api/workers/{name}/commands; remediation: the sweeper's restart-on-stale.
    source          text NOT NULL
                    CONSTRAINT worker_commands_source_known
                    CHECK (source IN ('operator', 'remediation')),
    reason          text NOT NULL DEFAULT ''
                    CONSTRAINT worker_commands_reason_length CHECK (char_length(reason) <= 500),
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at    timestamptz,
    acknowledged_at timestamptz,
    cancelled_at    timestamptz,
    -- The command's deployment must be one of this worker name's.
    CONSTRAINT worker_commands_deployment
        FOREIGN KEY (worker_name, serial_number) REFERENCES deployments (worker_name, serial_number),
    -- Each status carries exactly the times it implies: acknowledged only after delivery.
    CONSTRAINT worker_commands_status_times
        CHECK (CASE status
                   WHEN 'pending' THEN delivered_at IS NULL AND acknowledged_at IS NULL
                                       AND cancelled_at IS NULL
                   WHEN 'delivered' THEN delivered_at IS NOT NULL AND acknowledged_at IS NULL
                                         AND cancelled_at IS NULL
                   WHEN 'acknowledged' THEN delivered_at IS NOT NULL
                                            AND acknowledged_at IS NOT NULL
                                            AND cancelled_at IS NULL
                   WHEN 'cancelled' THEN cancelled_at IS NOT NULL AND acknowledged_at IS NULL
               END),
    CONSTRAINT worker_commands_times_ordered
        CHECK ((delivered_at IS NULL OR delivered_at >= created_at)
               AND (acknowledged_at IS NULL OR acknowledged_at >= delivered_at)
               AND (cancelled_at IS NULL OR cancelled_at >= created_at))
);

-- One open command of a kind per deployment: asking for a restart twice before the worker
-- took the first one is still one restart.
CREATE UNIQUE INDEX worker_commands_one_open
    ON worker_commands (serial_number, command) WHERE status IN ('pending', 'delivered');
CREATE INDEX worker_commands_by_worker ON worker_commands (worker_name, id DESC);

COMMENT ON TABLE worker_commands IS 'Commands for one deployment of a worker, delivered at least once in heartbeat responses until acknowledged.';

-- A deployment that ends takes its open commands with it: the process they were meant for is
-- gone, and its successor is a fresh start anyway.
CREATE FUNCTION cancel_commands_of_ended_deployment() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE worker_commands
    SET status = 'cancelled', cancelled_at = greatest(NEW.ended_at, created_at)
    WHERE serial_number = NEW.serial_number AND status IN ('pending', 'delivered');
    RETURN NULL;
END;
$$;

CREATE TRIGGER deployments_end_cancels_commands
    AFTER UPDATE OF ended_at ON deployments
    FOR EACH ROW WHEN (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL)
    EXECUTE FUNCTION cancel_commands_of_ended_deployment();
