//! The AWS SDK's configuration, loaded once per server and shared by every client (S3, SNS, SQS), so that
//! they share one credentials cache; each client takes the region its resource names when it names one (a
//! topic's ARN, a queue's URL, a setting), so that it never talks to another region than its resource's.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// One server's SDK configuration (credentials and region from the SDK's chain: environment, profile,
/// instance role), loaded by the first client that needs it; a server without AWS never loads it.
#[derive(Debug, Default)]
pub struct SharedConfig(tokio::sync::OnceCell<SdkConfig>);

impl SharedConfig {
    pub async fn get(&self) -> &SdkConfig {
        self.0.get_or_init(|| aws_config::load_defaults(BehaviorVersion::latest())).await
    }
}

/// `region` when given, else the shared configuration's.
pub fn region_or_shared(region: Option<&str>, shared: &SdkConfig) -> Option<Region> {
    region.map(|r| Region::new(r.to_owned())).or_else(|| shared.region().cloned())
}

/// The region of an ARN (`arn:aws:sns:eu-west-1:123456789012:topic`), when it names one.
pub fn region_of_arn(arn: &str) -> Option<&str> {
    arn.split(':').nth(3).filter(|region| !region.is_empty())
}

/// The region of an SQS queue URL (`https://sqs.eu-west-1.amazonaws.com/123456789012/queue`); `None` for a
/// URL that names none (a local endpoint).
pub fn region_of_queue_url(url: &str) -> Option<&str> {
    let host = url.split("://").nth(1)?.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some("sqs"), Some(region), Some("amazonaws")) => Some(region),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_read_from_what_names_them() {
        assert_eq!(region_of_arn("arn:aws:sns:eu-west-1:123456789012:alerts"), Some("eu-west-1"));
        assert_eq!(region_of_arn("arn:aws:s3:::bucket"), None);
        assert_eq!(
            region_of_queue_url("https://sqs.ap-south-1.amazonaws.com/123456789012/uploads"),
            Some("ap-south-1")
        );
        assert_eq!(region_of_queue_url("http://127.0.0.1:4566/123456789012/uploads"), None);
        assert_eq!(region_of_queue_url("https://queue.amazonaws.com/123456789012/uploads"), None);
    }
}
