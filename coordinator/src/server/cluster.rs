//! The `Cluster` service: worker membership by lease, and each worker's assignment as a
//! server stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anom_pipeline::unit::ROLES;
use anom_proto::v1;
use anom_proto::v1::cluster_server::Cluster;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::control::{Control, Member};
use super::pipelines::timestamp;
use super::store::WorkerRecord;
use anom_runtime::timebase::wall_ms;

pub struct ClusterService {
    pub control: Arc<Control>,
}

fn unknown_worker(id: &str) -> Status {
    Status::not_found(format!("no worker `{id}` is registered; register first"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.worker_id.is_empty() {
            return Err(Status::invalid_argument(
                "worker_id: expected a name, found nothing",
            ));
        }
        if let Some(bad) = req.roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
            return Err(Status::invalid_argument(format!(
                "roles: unknown role `{bad}`, expected some of {}",
                ROLES.join(", ")
            )));
        }
        let control = &self.control;
        let mut state = control.lock().await;
        let now = Instant::now();
        let record = WorkerRecord {
            id: req.worker_id.clone(),
            roles: req.roles,
            capacity: req.capacity.max(1),
            metrics_addr: req.metrics_addr,
            hostname: req.hostname,
            registered_at_ms: wall_ms(),
        };
        let (changed, was_alive) = match state.workers.get(&record.id) {
            Some(m) => (
                m.record.roles != record.roles || m.record.capacity != record.capacity,
                m.alive(now),
            ),
            None => (true, false),
        };
        control
            .store
            .put_worker(&record)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let (running_units, running) = state
            .workers
            .get(&record.id)
            .map_or((0, Vec::new()), |m| (m.running_units, m.running.clone()));
        state.workers.insert(
            record.id.clone(),
            Member {
                record,
                lease_until: now + control.lease_ttl,
                last_heartbeat_ms: wall_ms(),
                running_units,
                running,
            },
        );
        // A worker coming back (after a coordinator restart, say) within its lease keeps its
        // units: nothing moves.
        if changed || !was_alive {
            control.rebalance(&mut state, false, "worker joined").await;
        }
        Ok(Response::new(v1::RegisterResponse {
            lease_ttl_ms: control.lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: (control.lease_ttl / 4).as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let control = &self.control;
        let mut state = control.lock().await;
        let now = Instant::now();
        let Some(member) = state.workers.get_mut(&req.worker_id) else {
            return Ok(Response::new(v1::HeartbeatResponse { known: false }));
        };
        let was_alive = member.alive(now);
        member.lease_until = now + control.lease_ttl;
        member.last_heartbeat_ms = wall_ms();
        member.running_units = req.running_units;
        member.running = req.running;
        if !was_alive {
            control.rebalance(&mut state, false, "worker back").await;
        }
        Ok(Response::new(v1::HeartbeatResponse { known: true }))
    }

    async fn leave(
        &self,
        request: Request<v1::WorkerId>,
    ) -> Result<Response<v1::LeaveResponse>, Status> {
        let id = request.into_inner().worker_id;
        let control = &self.control;
        let mut state = control.lock().await;
        if state.workers.remove(&id).is_none() {
            return Err(unknown_worker(&id));
        }
        control
            .store
            .remove_worker(&id)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        control.rebalance(&mut state, false, "worker left").await;
        Ok(Response::new(v1::LeaveResponse {}))
    }

    type WatchAssignmentsStream =
        Pin<Box<dyn Stream<Item = Result<v1::Assignment, Status>> + Send + 'static>>;

    async fn watch_assignments(
        &self,
        request: Request<v1::WorkerId>,
    ) -> Result<Response<Self::WatchAssignmentsStream>, Status> {
        let id = request.into_inner().worker_id;
        if !self.control.lock().await.workers.contains_key(&id) {
            return Err(unknown_worker(&id));
        }
        let control = self.control.clone();
        let rx = control.subscribe();
        // The current assignment at once, then one message per change.
        let stream = futures::stream::unfold(
            (control, rx, id, true),
            |(control, mut rx, id, first)| async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                rx.borrow_and_update();
                let assignment = control.lock().await.assignment_of(&id);
                Some((Ok(assignment), (control, rx, id, false)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let state = self.control.lock().await;
        let now = Instant::now();
        let workers = state
            .workers
            .values()
            .map(|m| v1::WorkerInfo {
                worker_id: m.record.id.clone(),
                roles: m.record.roles.clone(),
                capacity: m.record.capacity,
                alive: m.alive(now),
                assigned_units: state
                    .owners
                    .values()
                    .filter(|o| o.worker == m.record.id)
                    .count() as u32,
                running_units: m.running_units,
                registered_at: timestamp(m.record.registered_at_ms),
                last_heartbeat: timestamp(m.last_heartbeat_ms),
                metrics_addr: m.record.metrics_addr.clone(),
                hostname: m.record.hostname.clone(),
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn list_assignments(
        &self,
        request: Request<v1::ListAssignmentsRequest>,
    ) -> Result<Response<v1::ListAssignmentsResponse>, Status> {
        let pipeline = request.into_inner().pipeline;
        let state = self.control.lock().await;
        if !pipeline.is_empty() && !state.pipelines.contains_key(&pipeline) {
            return Err(super::pipelines::not_found(&pipeline));
        }
        let wanted = |p: &str| pipeline.is_empty() || p == pipeline;
        Ok(Response::new(v1::ListAssignmentsResponse {
            generation: state.counters.generation,
            units: state
                .owners
                .iter()
                .filter(|(u, _)| wanted(&u.pipeline))
                .map(|(u, o)| state.unit_message(u, Some(o)))
                .collect(),
            unassigned: state
                .unassigned
                .iter()
                .filter(|u| wanted(&u.pipeline))
                .map(|u| state.unit_message(u, None))
                .collect(),
        }))
    }
}
