-- Invariants the code relies on that the schema did not yet hold.

-- Names, user ids and worker types: the registration rules, on every table that stores them.
-- Names that are routes of the API (`/api/workers/list`, ...) cannot be a worker's, and no
-- text starts or ends with white space (" w" and "w" would be two workers).
ALTER TABLE workers
    ADD CONSTRAINT workers_name_not_reserved
        CHECK (worker_name NOT IN ('list', 'status', 'register', 'heartbeat', 'models',
                                   'events', 'liveness', '.', '..')),
    ADD CONSTRAINT workers_name_trimmed CHECK (worker_name !~ '^[[:space:]]|[[:space:]]$'),
    ADD CONSTRAINT workers_user_id_trimmed CHECK (user_id !~ '^[[:space:]]|[[:space:]]$'),
    ADD CONSTRAINT workers_worker_type_rule
        CHECK (char_length(worker_type) BETWEEN 1 AND 128 AND worker_type !~ '[[:cntrl:]]'
               AND worker_type !~ '^[[:space:]]|[[:space:]]$'),
    ADD CONSTRAINT workers_generation_range CHECK (generation BETWEEN 1 AND 99),
    ADD CONSTRAINT workers_metadata_object CHECK (jsonb_typeof(metadata) = 'object');

ALTER TABLE deployments
    ADD CONSTRAINT deployments_name_rule
        CHECK (char_length(worker_name) BETWEEN 1 AND 128 AND worker_name !~ '[[:cntrl:]]'
               AND worker_name !~ '^[[:space:]]|[[:space:]]$'
               AND worker_name NOT IN ('list', 'status', 'register', 'heartbeat', 'models',
                                       'events', 'liveness', '.', '..')),
    ADD CONSTRAINT deployments_api_url_rule
        CHECK (char_length(api_url) <= 2048 AND api_url ~* '^https?://[^/?#[:space:]]+'
               AND api_url !~ '[[:space:][:cntrl:]]'),
    ADD CONSTRAINT deployments_user_id_rule
        CHECK (char_length(user_id) BETWEEN 1 AND 128 AND user_id !~ '[[:cntrl:]]'
               AND user_id !~ '^[[:space:]]|[[:space:]]$'),
    ADD CONSTRAINT deployments_worker_type_rule
        CHECK (char_length(worker_type) BETWEEN 1 AND 128 AND worker_type !~ '[[:cntrl:]]'
               AND worker_type !~ '^[[:space:]]|[[:space:]]$');

ALTER TABLE workers DROP CONSTRAINT workers_api_url_rule;
ALTER TABLE workers
    ADD CONSTRAINT workers_api_url_rule
        CHECK (char_length(api_url) <= 2048 AND api_url ~* '^https?://[^/?#[:space:]]+'
               AND api_url !~ '[[:space:][:cntrl:]]');

-- A worker event and a heartbeat belong to a deployment of that very worker.
ALTER TABLE worker_events
    ADD CONSTRAINT worker_events_deployment
        FOREIGN KEY (worker_name, serial_number) REFERENCES deployments (worker_name, serial_number);
ALTER TABLE heartbeats
    ADD CONSTRAINT heartbeats_deployment
        FOREIGN KEY (worker_name, serial_number) REFERENCES deployments (worker_name, serial_number);

-- A worker's current deployment is open exactly while the worker has not deregistered, and
-- no other deployment of its name is open. Checked at commit, when a registration or a
-- deregistration has written both tables.
CREATE FUNCTION check_worker_deployment() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    current record;
BEGIN
    SELECT w.status, w.serial_number, d.ended_at,
           EXISTS (SELECT 1 FROM deployments o
                   WHERE o.worker_name = w.worker_name AND o.ended_at IS NULL
                     AND o.serial_number <> w.serial_number) AS another_open
    INTO current
    FROM workers w JOIN deployments d ON d.serial_number = w.serial_number
    WHERE w.worker_name = NEW.worker_name;
    IF FOUND AND ((current.status = 'deregistered') <> (current.ended_at IS NOT NULL)
                  OR current.another_open) THEN
        RAISE EXCEPTION 'worker %: its current deployment % must be open exactly while it has not deregistered (status %, ended_at %), and the only open one',
                        NEW.worker_name, current.serial_number, current.status, current.ended_at
            USING ERRCODE = 'check_violation', CONSTRAINT = 'workers_current_deployment_open';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER workers_current_deployment_open_insert
    AFTER INSERT ON workers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_worker_deployment();
-- Heartbeats of an active worker change neither, and are not checked.
CREATE CONSTRAINT TRIGGER workers_current_deployment_open_update
    AFTER UPDATE ON workers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.serial_number IS DISTINCT FROM NEW.serial_number)
    EXECUTE FUNCTION check_worker_deployment();
CREATE CONSTRAINT TRIGGER deployments_current_open_insert
    AFTER INSERT ON deployments DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_worker_deployment();
CREATE CONSTRAINT TRIGGER deployments_current_open_update
    AFTER UPDATE ON deployments DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.ended_at IS DISTINCT FROM NEW.ended_at)
    EXECUTE FUNCTION check_worker_deployment();

-- A model number names one worker type, so a live worker's model number tells which catalog
-- entry it came from (unknown types come from `generic`).
ALTER TABLE model_catalog
    ADD CONSTRAINT model_catalog_model_unique UNIQUE (family, generation);

-- An entry whose model number a live (not deregistered) worker carries keeps it: it is not
-- deleted and its family and generation do not change.
CREATE FUNCTION keep_catalog_entry_in_use() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    holder text;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.family = OLD.family AND NEW.generation = OLD.generation THEN
        RETURN NEW;
    END IF;
    SELECT worker_name INTO holder FROM workers
    WHERE model_number = OLD.model_number AND status <> 'deregistered'
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'catalog entry % (%) is carried by live worker %', OLD.worker_type,
                        OLD.model_number, holder
            USING ERRCODE = 'restrict_violation', CONSTRAINT = 'model_catalog_in_use';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

CREATE TRIGGER model_catalog_in_use
    BEFORE DELETE OR UPDATE OF family, generation ON model_catalog
    FOR EACH ROW EXECUTE FUNCTION keep_catalog_entry_in_use();

CREATE INDEX workers_by_model_status ON workers (model_number, status);
