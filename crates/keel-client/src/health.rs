//! Server health: readiness and the supervised tasks that failed.

use keel_api::health::{Readiness, Tasks};
use reqwest::{Method, StatusCode};

use crate::client::{Answer, Client};
use crate::error::ClientError;

impl Client {
    /// `GET /readyz`: where the server stands. Its 503 (recovering, or a damaged data
    /// directory) is an answer here, not an error: the body says which, and why.
    pub async fn readiness(&self) -> Result<Answer<Readiness>, ClientError> {
        let accepted = [StatusCode::SERVICE_UNAVAILABLE];
        let reply = self
            .send_accepting(Method::GET, &["readyz"], &[], None, &accepted)
            .await?;
        Answer::decode(reply)
    }

    /// `GET /v1/tasks`: the supervised tasks that failed since the server started.
    pub async fn tasks(&self) -> Result<Answer<Tasks>, ClientError> {
        self.call(Method::GET, &["v1", "tasks"], &[], None).await
    }

    /// `GET /v1/cluster`: the nodes of the cluster and which units each holds (a single
    /// node answers with itself).
    pub async fn cluster(&self) -> Result<Answer<keel_api::cluster::ClusterStatus>, ClientError> {
        self.call(Method::GET, &["v1", "cluster"], &[], None).await
    }
}
