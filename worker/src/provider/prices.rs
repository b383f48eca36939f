//! What a model call cost: a price table per (provider, model) in integer micro-dollars per
//! million tokens, and checked integer arithmetic from token counts to micro-dollars.
//!
//! The table ships with the vendors' list prices (`prices.json`, which says when they were
//! checked) and can be overridden per model from a JSON file of the same shape
//! (`AGENTPLANE_PRICES_FILE`). A model the table does not know costs 0 and is flagged
//! (`ModelUsage::unpriced`, and a warning in the log): a cost is never guessed.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{ModelUsage, Provider};

/// The prices shipped with this build.
const BUILTIN: &str = include_str!("prices.json");

/// One token is billed at `price / 1_000_000` micro-dollars.
const TOKENS_PER_PRICE_UNIT: i64 = 1_000_000;

/// One tier of a model's prices, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    /// Prompt tokens not served from the cache.
    pub input: i64,
    /// Generated tokens (reasoning included).
    pub output: i64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: i64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write: i64,
}

/// A model's prices (micro-dollars per million tokens), with a second tier for long prompts
/// where the vendor charges more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt tokens not served from the cache.
    pub input: i64,
    /// Generated tokens (reasoning included).
    pub output: i64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: i64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write: i64,
    /// Rates for every token of a call whose prompt is longer than a threshold.
    #[serde(default)]
    pub long_context: Option<LongContext>,
}

/// The rates a vendor charges for a whole call once the prompt passes a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LongContext {
    /// Prompts of more input tokens than this use these rates.
    pub above_input_tokens: i64,
    /// Prompt tokens not served from the cache.
    pub input: i64,
    /// Generated tokens.
    pub output: i64,
    /// Prompt tokens read from the prompt cache.
    pub cache_read: i64,
    /// Prompt tokens written to the prompt cache.
    pub cache_write: i64,
}

impl Price {
    /// The rates that apply to a call with `input_tokens` of prompt.
    pub fn rates(&self, input_tokens: i64) -> Rates {
        match self.long_context {
            Some(long) if input_tokens > long.above_input_tokens => Rates {
                input: long.input,
                output: long.output,
                cache_read: long.cache_read,
                cache_write: long.cache_write,
            },
            _ => Rates {
                input: self.input,
                output: self.output,
                cache_read: self.cache_read,
                cache_write: self.cache_write,
            },
        }
    }

    fn is_negative(&self) -> bool {
        let negative =
            |r: Rates| r.input < 0 || r.output < 0 || r.cache_read < 0 || r.cache_write < 0;
        negative(self.rates(0))
            || self
                .long_context
                .is_some_and(|long| long.above_input_tokens < 0 || negative(self.rates(i64::MAX)))
    }
}

/// The file format (also of the shipped table).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    /// When the prices were last checked against the vendors' pages.
    #[serde(default)]
    checked: Option<String>,
    /// Where they come from (documentation inside the file).
    #[serde(default, rename = "source")]
    _source: Option<serde::de::IgnoredAny>,
    /// Provider name → model name → price.
    prices: HashMap<String, HashMap<String, Price>>,
}

/// A price file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The file could not be read.
    #[error("cannot read the price file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON does not have the expected shape.
    #[error("the price file is not valid: {0}")]
    Format(#[from] serde_json::Error),
    /// A provider name is unknown.
    #[error("the price file names an unknown provider {0:?}")]
    Provider(String),
    /// A price is negative.
    #[error("the price of {provider} {model} is negative")]
    Negative {
        /// The provider.
        provider: String,
        /// The model.
        model: String,
    },
}

/// Prices by (provider, model name as the agent names it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceTable {
    prices: HashMap<(Provider, String), Price>,
    checked: Option<String>,
}

impl PriceTable {
    /// The prices shipped with this build.
    pub fn builtin() -> Self {
        let mut table = Self::default();
        #[expect(
            clippy::expect_used,
            reason = "the shipped table is checked by a unit test; a broken one must not start"
        )]
        table
            .merge_json(BUILTIN)
            .expect("the shipped price table is valid");
        table
    }

    /// The shipped prices, with every entry of the JSON file at `path` added or replacing
    /// the shipped one of the same (provider, model).
    pub fn builtin_with_file(path: &Path) -> Result<Self, PriceError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut table = Self::builtin();
        table.merge_json(&text)?;
        Ok(table)
    }

    /// Adds (or replaces) every entry of a price file's JSON text.
    pub fn merge_json(&mut self, json: &str) -> Result<(), PriceError> {
        let file: PriceFile = serde_json::from_str(json)?;
        if file.checked.is_some() {
            self.checked = file.checked;
        }
        for (provider_name, models) in file.prices {
            let provider = Provider::parse(&provider_name)
                .map_err(|_| PriceError::Provider(provider_name.clone()))?;
            for (model, price) in models {
                let negative = price.is_negative();
                if negative {
                    return Err(PriceError::Negative {
                        provider: provider_name,
                        model,
                    });
                }
                self.prices.insert((provider, model), price);
            }
        }
        Ok(())
    }

    /// The price of `model` on `provider`, if the table has one.
    pub fn get(&self, provider: Provider, model: &str) -> Option<&Price> {
        self.prices.get(&(provider, model.to_owned()))
    }

    /// When the last price file merged says its prices were checked.
    pub fn checked(&self) -> Option<&str> {
        self.checked.as_deref()
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

/// What `usage` costs at `price`, in micro-dollars rounded to the nearest one (half up), or
/// `None` when the arithmetic would overflow (counts no vendor reports). Uncached input is
/// `input − cache read − cache write`, never below 0.
pub fn cost_micros(price: &Price, usage: &ModelUsage) -> Option<i64> {
    let rates = price.rates(usage.input_tokens);
    let cached = usage
        .cache_read_input_tokens
        .checked_add(usage.cache_write_input_tokens)?;
    let uncached = usage.input_tokens.checked_sub(cached)?.max(0);
    let parts = [
        (uncached, rates.input),
        (usage.cache_read_input_tokens.max(0), rates.cache_read),
        (usage.cache_write_input_tokens.max(0), rates.cache_write),
        (usage.output_tokens.max(0), rates.output),
    ];
    let mut total: i64 = 0;
    for (tokens, rate) in parts {
        total = total.checked_add(tokens.checked_mul(rate)?)?;
    }
    total
        .checked_add(TOKENS_PER_PRICE_UNIT / 2)
        .map(|rounded| rounded / TOKENS_PER_PRICE_UNIT)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn usage(input: i64, output: i64, cache_read: i64, cache_write: i64) -> ModelUsage {
        ModelUsage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cache_read,
            cache_write_input_tokens: cache_write,
            ..ModelUsage::default()
        }
    }

    #[test]
    fn the_shipped_table_parses_and_knows_common_models() {
        let table = PriceTable::builtin();
        assert!(table.len() > 20);
        let sonnet = table
            .get(Provider::Anthropic, "claude-sonnet-4-5")
            .expect("priced");
        assert_eq!(sonnet.input, 3_000_000, "$3 per million tokens");
        assert!(table.get(Provider::OpenAi, "gpt-4o-mini").is_some());
        assert!(table.get(Provider::Gemini, "gemini-2.5-flash").is_some());
        assert!(table.get(Provider::OpenAi, "claude-sonnet-4-5").is_none());
        assert!(table.get(Provider::OpenAiCompatible, "gpt-4o").is_none());
    }

    #[test]
    fn cost_charges_each_kind_of_token_at_its_rate() {
        // Sonnet 4.5: $3 in, $15 out, $0.30 cache read, $3.75 cache write per million.
        let price = *PriceTable::builtin()
            .get(Provider::Anthropic, "claude-sonnet-4-5")
            .expect("priced");
        // 1,000 uncached + 2,000 read + 500 written, 400 out:
        // 1000*3 + 2000*0.3 + 500*3.75 + 400*15 = 3000 + 600 + 1875 + 6000 = 11475 µ$.
        assert_eq!(
            cost_micros(&price, &usage(3500, 400, 2000, 500)),
            Some(11_475)
        );
        assert_eq!(cost_micros(&price, &usage(0, 0, 0, 0)), Some(0));
        // 1 token at $3/M is 3 µ$; 1 cached read at $0.30/M is 0.3 µ$, rounded to 0.
        assert_eq!(cost_micros(&price, &usage(1, 0, 0, 0)), Some(3));
        assert_eq!(cost_micros(&price, &usage(1, 0, 1, 0)), Some(0));
    }

    #[test]
    fn long_prompts_use_the_long_context_rates() {
        let price = *PriceTable::builtin()
            .get(Provider::Gemini, "gemini-2.5-pro")
            .expect("priced");
        // ≤200k: $1.25 in, $10 out; above: $2.50 in, $15 out.
        assert_eq!(
            cost_micros(&price, &usage(200_000, 1000, 0, 0)),
            Some(260_000)
        );
        assert_eq!(
            cost_micros(&price, &usage(200_001, 1000, 0, 0)),
            Some(515_003)
        );
    }

    #[test]
    fn a_file_overrides_and_adds_and_bad_files_are_refused() {
        let mut table = PriceTable::builtin();
        table
            .merge_json(
                r#"{"prices": {"openai_compatible": {"llama-3.1-8b": {"input": 1, "output": 2, "cache_read": 0, "cache_write": 0}},
                              "openai": {"gpt-4o": {"input": 9, "output": 9, "cache_read": 9, "cache_write": 9}}}}"#,
            )
            .expect("a valid file");
        assert_eq!(
            table
                .get(Provider::OpenAiCompatible, "llama-3.1-8b")
                .map(|p| p.output),
            Some(2)
        );
        assert_eq!(
            table.get(Provider::OpenAi, "gpt-4o").map(|p| p.input),
            Some(9)
        );
        assert!(
            table
                .get(Provider::OpenAi, "gpt-4o-mini")
                .is_some_and(|p| p.input == 150_000),
            "untouched entries stay"
        );
        for bad in [
            r#"{"prices": {"acme": {}}}"#,
            r#"{"prices": {"openai": {"x": {"input": -1, "output": 0, "cache_read": 0, "cache_write": 0}}}}"#,
            r#"{"prices": {"openai": {"x": {"input": 1, "output": 0}}}}"#,
            r#"{"prices": {"openai": {"x": {"input": 1.5, "output": 0, "cache_read": 0, "cache_write": 0}}}}"#,
            r#"{"price": {}}"#,
        ] {
            assert!(table.merge_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overflow_is_no_cost_rather_than_a_wrong_one() {
        let price = Price {
            input: i64::MAX,
            output: 1,
            cache_read: 1,
            cache_write: 1,
            long_context: None,
        };
        assert_eq!(cost_micros(&price, &usage(2, 0, 0, 0)), None);
    }

    proptest! {
        #[test]
        fn cost_grows_with_every_count(
            input in 0i64..10_000_000,
            output in 0i64..10_000_000,
            read_share in 0i64..=100,
            extra in 1i64..1000,
        ) {
            let price = *PriceTable::builtin()
                .get(Provider::Anthropic, "claude-opus-4-1")
                .expect("priced");
            let read = input * read_share / 100;
            let base = cost_micros(&price, &usage(input, output, read, 0)).expect("no overflow");
            let more_output =
                cost_micros(&price, &usage(input, output + extra, read, 0)).expect("no overflow");
            prop_assert!(more_output >= base);
            prop_assert!(base >= 0);
            // Reading from the cache never costs more than an uncached prompt.
            let uncached = cost_micros(&price, &usage(input, output, 0, 0)).expect("no overflow");
            prop_assert!(base <= uncached);
        }
    }
}
