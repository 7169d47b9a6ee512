#include "server/ops/edit/default_statistics_text.h"

namespace deltaserve::ops::edit {

const std::vector<std::string>& DefaultStatisticsTexts() {
  static const std::vector<std::string> texts = {
      "The river runs through the middle of the old town, and on summer evenings people walk along its banks.",
      "She opened the window, looked at the grey sky and decided to take an umbrella to work.",
      "A kilometre is a thousand metres; a mile is a little more than one and a half kilometres.",
      "The library closes at eight on weekdays and at five on Saturdays. It is closed on Sundays.",
      "He learned to play the piano as a child and still practises for an hour every morning.",
      "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature in the mountains.",
      "The train to the coast leaves from platform four at twenty past nine.",
      "Our team meets on Mondays to plan the week and on Fridays to look back at what went well.",
      "The museum has a large collection of paintings, maps and old instruments from many countries.",
      "In spring the farmers plant wheat and barley; in autumn they bring in the harvest.",
      "The capital of a country is usually the city where its government sits.",
      "My grandmother kept bees in the garden behind her house and sold the honey at the market.",
      "The bridge was built in stone more than two hundred years ago and is still used every day.",
      "Seven times eight is fifty-six, and nine times nine is eighty-one.",
      "The doctor told him to rest for a week, drink plenty of water and come back if the cough stayed.",
      "Most birds build their nests in trees, but some make them on the ground or on cliffs by the sea.",
      "The company sells bicycles, helmets and spare parts in shops across the north of the country.",
      "A good cup of tea needs fresh water, a warm pot and a few minutes of patience.",
      "The mountains to the west are covered in snow from November until April.",
      "The children painted a picture of the school, with the tall oak tree and the red front door.",
      "The Earth goes around the Sun once a year and turns on its axis once a day.",
      "He wrote the report on Tuesday, sent it to his manager and waited for her comments.",
      "The market square fills with stalls selling fruit, cheese, bread and flowers every Thursday.",
      "An orchestra has strings, woodwind, brass and percussion, led by a conductor.",
      "The storm knocked down several trees and left the village without power for a night.",
      "The recipe asks for two eggs, a cup of flour, a spoon of sugar and a pinch of salt.",
      "The island can only be reached by boat, and the crossing takes about forty minutes.",
      "Her first novel was about a lighthouse keeper who writes letters to a stranger.",
      "The football match ended in a draw after both teams scored in the second half.",
      "Light travels faster than sound, which is why we see lightning before we hear thunder.",
      "The new road will connect the two valleys and cut the journey from an hour to twenty minutes.",
      "Every house on the street has a small garden at the front and a larger one at the back.",
      "The engineer checked the pumps, replaced a valve and wrote down the pressure readings.",
      "In the evening the café is quiet, and students come to read and drink coffee.",
      "The forest is home to deer, foxes, owls and many kinds of insects.",
      "The city council voted to build a new park next to the old railway station.",
      "My brother works as a nurse at the hospital on the hill and often works at night.",
      "Paper was invented a very long time ago, and printing made books cheaper for everyone.",
      "The shop on the corner sells newspapers, stamps, sweets and cold drinks.",
      "The lake freezes in winter, and people skate on it when the ice is thick enough.",
  };
  return texts;
}

}  // namespace deltaserve::ops::edit
