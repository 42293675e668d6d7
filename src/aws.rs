//! The AWS SDK's shared configuration, loaded one way for every client (S3, SNS, SQS): the SDK's chain for
//! credentials and region, with the region a resource names when it names one (a topic's ARN, a queue's URL),
//! so that a client never talks to another region than its resource's.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The SDK's configuration with `region` when given, else the SDK's chain (environment, profile, instance).
pub async fn shared_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    loader.load().await
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
