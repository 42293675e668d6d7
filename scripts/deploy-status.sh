#!/usr/bin/env bash
# Where a deployment stands, read from AWS with the AWS CLI v2 and the caller's credentials (read-only calls):
#
#   scripts/deploy-status.sh [STACK]        STACK defaults to upshot-prod
#
#   stack       the stack's status (the pipeline's Infrastructure stage updates it on every push)
#   pipeline    the latest execution (id, status, commit) and each stage's latest state, with the message of
#               any failed action
#   deployment  the deployment group's latest CodeDeploy deployment: status, counts, error, and for every
#               instance its lifecycle events (ApplicationStop ... ValidateService) with their status and, for a
#               failed one, the script's error and last output
#   targets     the target group's health of each registered instance (healthy, unhealthy and why, draining)
#   logs        the last lines of the application's log group (/upshot/<env>/app) from the last 30 minutes
#
# Names come from the stack's resources (Pipeline, CodeDeployApplication, DeploymentGroup, TargetGroup,
# AppLogGroup). Environment: AWS_REGION / AWS_PROFILE as for the CLI; UPSHOT_STATUS_LOG_LINES (default 20);
# UPSHOT_STATUS_LOG_SINCE (default 30m). Exits non-zero when an AWS call fails. Tested offline against
# deploy/codedeploy/testing/fake-aws-status.
# shellcheck disable=SC2016  # JMESPath writes its literals in backquotes, inside single-quoted --query strings
set -euo pipefail

stack=${1:-upshot-prod}
log_lines=${UPSHOT_STATUS_LOG_LINES:-20}
log_since=${UPSHOT_STATUS_LOG_SINCE:-30m}

section() { printf '\n== %s\n' "$*"; }
# Text output of a query; the CLI's "None" for a missing field is dropped from the end of each line.
q() { aws "$@" --output text | sed -e 's/\(\tNone\)*$//'; }

resources=$(q cloudformation describe-stack-resources --stack-name "$stack" \
    --query 'StackResources[].[LogicalResourceId,PhysicalResourceId]')
physical() {
    local id
    id=$(awk -v want="$1" '$1 == want { print $2 }' <<<"$resources")
    [ -n "$id" ] || { echo "deploy-status: the stack $stack has no resource $1" >&2; exit 1; }
    printf '%s\n' "$id"
}
pipeline=$(physical Pipeline)
application=$(physical CodeDeployApplication)
group=$(physical DeploymentGroup)
target_group=$(physical TargetGroup)
log_group=$(physical AppLogGroup)

section "stack $stack"
q cloudformation describe-stacks --stack-name "$stack" \
    --query 'Stacks[0].[StackStatus,LastUpdatedTime||CreationTime,StackStatusReason]'

section "pipeline $pipeline"
q codepipeline list-pipeline-executions --pipeline-name "$pipeline" --max-items 1 \
    --query 'pipelineExecutionSummaries[0].[pipelineExecutionId,status,startTime,sourceRevisions[0].revisionId]' |
    sed -n '1s/^/latest execution\t/p'
q codepipeline get-pipeline-state --name "$pipeline" \
    --query 'stageStates[].[stageName,latestExecution.status,latestExecution.pipelineExecutionId]' |
    sed 's/^/stage\t/'
q codepipeline get-pipeline-state --name "$pipeline" \
    --query 'stageStates[].actionStates[?latestExecution.status==`Failed`][].[actionName,latestExecution.errorDetails.message]' |
    sed 's/^/failed action\t/'

section "deployment group $application/$group"
deployment=$(q deploy list-deployments --application-name "$application" --deployment-group-name "$group" \
    --max-items 1 --query 'deployments[0]' | head -n 1)
if [ -z "$deployment" ] || [ "$deployment" = None ]; then
    echo "no deployment yet"
else
    q deploy get-deployment --deployment-id "$deployment" \
        --query 'deploymentInfo.[deploymentId,status,createTime,completeTime,creator]' | sed 's/^/deployment\t/'
    q deploy get-deployment --deployment-id "$deployment" \
        --query 'deploymentInfo.deploymentOverview.[Succeeded,InProgress,Pending,Failed,Skipped]' |
        awk -F '\t' '{ printf "instances\tsucceeded %s, in progress %s, pending %s, failed %s, skipped %s\n", $1, $2, $3, $4, $5 }'
    q deploy get-deployment --deployment-id "$deployment" \
        --query 'deploymentInfo.errorInformation.[code,message]' | grep -v '^None' | sed 's/^/error\t/' || true
    targets=$(q deploy list-deployment-targets --deployment-id "$deployment" --query 'targetIds[]')
    for target in $targets; do
        [ "$target" != None ] || continue
        q deploy batch-get-deployment-targets --deployment-id "$deployment" --target-ids "$target" \
            --query 'deploymentTargets[0].instanceTarget.[targetId,status,lastUpdatedAt]' | sed 's/^/instance\t/'
        q deploy batch-get-deployment-targets --deployment-id "$deployment" --target-ids "$target" \
            --query 'deploymentTargets[0].instanceTarget.lifecycleEvents[].[lifecycleEventName,status,diagnostics.errorCode,diagnostics.message]' |
            sed 's/^/  event\t/'
        q deploy batch-get-deployment-targets --deployment-id "$deployment" --target-ids "$target" \
            --query 'deploymentTargets[0].instanceTarget.lifecycleEvents[?status==`Failed`].diagnostics.logTail' |
            grep -v '^None$' | sed 's/^/  log\t/' || true
    done
fi

section "target health"
health=$(q elbv2 describe-target-health --target-group-arn "$target_group" \
    --query 'TargetHealthDescriptions[].[Target.Id,TargetHealth.State,TargetHealth.Reason,TargetHealth.Description]')
if [ -z "$health" ]; then echo "no registered target"; else printf '%s\n' "$health"; fi

section "log group $log_group (last $log_lines lines, $log_since)"
logs=$(aws logs tail "$log_group" --since "$log_since" --format short)
if [ -z "$logs" ]; then echo "no log lines"; else tail -n "$log_lines" <<<"$logs"; fi
