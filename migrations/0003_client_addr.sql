-- The client's address as the proxy determined it by its trust rule (`http.trusted_proxies`):
-- the connection's peer, or for a trusted peer the first untrusted X-Forwarded-For address from
-- the right. The same value the proxy logs and its rate limiting will use. Null for clients not
-- on IP. Added at the end of the training view, which the JSONL request log mirrors column for
-- column.
ALTER TABLE requests ADD COLUMN client_addr text;

CREATE OR REPLACE VIEW training_requests AS
SELECT time, request_id, trace_id, pool, route, backend, backend_address, method, status, error,
       latency_us, upstream_latency_us, request_bytes, response_bytes, retries, strategy,
       f_inflight, f_latency_ewma_ms, f_error_rate, f_weight, f_since_success_ms,
       f_reported_cpu, f_reported_queue, f_reported_rps, predicted_latency_us, client_addr
FROM requests
WHERE backend IS NOT NULL;
