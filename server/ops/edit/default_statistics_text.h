// DefaultStatisticsTexts: the built-in body of text over which edit jobs estimate key statistics
// (C = E[k k^T]) when the request names no covariance dataset: short passages of ordinary
// English prose on everyday subjects (places, people, science, work, weather, numbers),
// written for this project. Real deployments should name a large dataset of their domain; this
// one is enough to whiten the common direction of the keys, so that an edit touches its subject
// rather than every token.
#pragma once

#include <string>
#include <vector>

namespace deltaserve::ops::edit {

const std::vector<std::string>& DefaultStatisticsTexts();

}  // namespace deltaserve::ops::edit
