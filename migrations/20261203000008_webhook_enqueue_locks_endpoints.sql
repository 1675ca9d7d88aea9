-- The outbox trigger runs at commit and reads the subscribed endpoints. An endpoint deleted by
-- a concurrent transaction in between made the delivery's foreign key fail, and so the whole
-- transition (a registration, a heartbeat, a sweep batch) with it. The endpoints read are now
-- share-locked on their key: a concurrent DELETE waits for this commit, and an endpoint whose
-- DELETE committed first is simply not read (it wants no more deliveries).
CREATE OR REPLACE FUNCTION enqueue_webhook_deliveries() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    restart_queued boolean := false;
    body text;
    endpoint_ids bigint[];
BEGIN
    SELECT array_agg(id ORDER BY id) INTO endpoint_ids
    FROM (SELECT e.id FROM webhook_endpoints e
          WHERE e.enabled AND NEW.kind = ANY (e.events)
          ORDER BY e.id
          FOR KEY SHARE) subscribed;
    IF endpoint_ids IS NULL THEN
        RETURN NULL;
    END IF;
    IF NEW.serial_number IS NOT NULL THEN
        SELECT EXISTS (SELECT 1 FROM worker_commands
                       WHERE serial_number = NEW.serial_number AND command = 'restart'
                         AND status IN ('pending', 'delivered'))
        INTO restart_queued;
    END IF;
    SELECT jsonb_build_object(
               'event_id', NEW.id,
               'kind', NEW.kind,
               'worker_name', NEW.worker_name,
               'serial_number', NEW.serial_number,
               'from_status', NEW.from_status,
               'to_status', NEW.to_status,
               'reason', NEW.reason,
               'at', to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'model_number', d.model_number,
               'worker_type', d.worker_type,
               'api_url', d.api_url,
               'user_id', d.user_id,
               'metadata', d.metadata,
               'restart_queued', restart_queued)::text
    INTO body
    FROM (SELECT 1) one
    LEFT JOIN deployments d ON d.serial_number = NEW.serial_number;

    INSERT INTO webhook_deliveries (endpoint_id, event_id, kind, payload)
    SELECT id, NEW.id, NEW.kind, body FROM unnest(endpoint_ids) AS id;
    RETURN NULL;
END;
$$;
