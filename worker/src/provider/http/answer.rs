//! A finished stream made an answer: its finish reason reconciled with its tool calls, its
//! size checked, its usage priced.

use super::{Finished, HttpProvider, MAX_OUTPUT_BYTES, TryFailure, WireFormat, clean_request_id};
use crate::provider::prices::cost_micros;
use crate::provider::{
    FinishReason, ModelRequest, ModelResponse, ModelUsage, ProviderError, Rejection, ToolCall,
};

impl<W: WireFormat> HttpProvider<W> {
    /// The finished call, priced; its tool calls checked against the finish reason and the
    /// output limit.
    pub(super) fn response(
        &self,
        request: &ModelRequest,
        text: String,
        finished: Finished,
        vendor_request_id: Option<String>,
    ) -> Result<ModelResponse, TryFailure> {
        let model = finished.model.unwrap_or_else(|| request.model.clone());
        let usage = if finished.usage_reported {
            self.priced(request, Some(&model), finished.usage)
        } else {
            tracing::warn!(
                provider = %self.provider,
                model = %request.model,
                "the stream carried no usage; the call is recorded with no tokens and no cost"
            );
            ModelUsage {
                unpriced: true,
                ..finished.usage
            }
        };
        let streamed = !text.is_empty();
        let fail = |error: ProviderError| TryFailure {
            error: if finished.usage_reported {
                error.with_spend(usage)
            } else {
                error
            },
            streamed,
        };
        let (finish_reason, tool_calls) =
            settle(finished.finish_reason, finished.tool_calls).map_err(fail)?;
        let size = tool_calls
            .iter()
            .map(|call| call.id.len() + call.name.len() + call.arguments.len())
            .fold(text.len(), usize::saturating_add);
        if size > MAX_OUTPUT_BYTES {
            return Err(fail(ProviderError::rejected(
                Rejection::OutputTooLarge,
                format!("the answer and its tool calls passed {MAX_OUTPUT_BYTES} bytes"),
            )));
        }
        Ok(ModelResponse {
            text,
            finish_reason,
            tool_calls,
            model,
            usage,
            vendor_request_id: vendor_request_id
                .or_else(|| finished.response_id.as_deref().and_then(clean_request_id)),
        })
    }

    /// `usage` with its cost from the price table (by the requested model, else the model
    /// that answered), or flagged unpriced when the table has no price.
    pub(super) fn priced(
        &self,
        request: &ModelRequest,
        answered: Option<&str>,
        mut usage: ModelUsage,
    ) -> ModelUsage {
        match self
            .prices
            .get(self.provider, &request.model)
            .or_else(|| answered.and_then(|model| self.prices.get(self.provider, model)))
            .map(|price| cost_micros(price, &usage))
        {
            Some(Some(cost)) => usage.cost_micros = cost,
            Some(None) => {
                tracing::warn!(provider = %self.provider, model = %request.model, "model call cost overflowed; recorded as 0");
                usage.unpriced = true;
            }
            None => {
                tracing::warn!(
                    provider = %self.provider,
                    model = %request.model,
                    "no price for this model; its cost is recorded as 0 (set AGENTPLANE_PRICES_FILE)"
                );
                usage.unpriced = true;
            }
        }
        usage
    }
}

/// The finish reason and tool calls of an answer, whatever the vendor's habits: calls cut by
/// the token limit cannot be run (only the text counts); calls after a "stop" (Gemini always
/// says `STOP`, some OpenAI-compatible servers say `stop`) are calls; a vendor that says the
/// model called tools without sending any answered something this adapter cannot use.
pub(super) fn settle(
    finish_reason: FinishReason,
    tool_calls: Vec<ToolCall>,
) -> Result<(FinishReason, Vec<ToolCall>), ProviderError> {
    match (finish_reason, tool_calls.is_empty()) {
        (FinishReason::MaxTokens, _) => Ok((FinishReason::MaxTokens, Vec::new())),
        (_, false) => Ok((FinishReason::ToolCalls, tool_calls)),
        (FinishReason::ToolCalls, true) => Err(ProviderError::rejected(
            Rejection::UnexpectedResponse,
            "the vendor said the model called tools but sent no tool call",
        )),
        (reason, true) => Ok((reason, Vec::new())),
    }
}
